import subprocess
import sys

FORBIDDEN = ("torch", "fastapi", "sqlalchemy", "jobs", "service", "gif", "workers", "numpy")


def test_import_loads_only_httpx_and_stdlib():
    code = (
        "import sys, gif_client\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"gif_client imported: {out.stdout}"
