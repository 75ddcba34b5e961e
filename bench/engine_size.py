"""How many of ``gif/``'s lines implement the features the engine had when the engine-core issue
was filed (commit 8a060bf), and how many the features added since.

The engine-core issue asked for an engine "smaller for the same features"; it has grown since by
features of its own (Kronecker-factored curvature, the audit, head edits, ``.pt2`` and Hugging Face
models, …). This script splits today's lines by the commit that wrote each one
(``git blame -w -M -C -C``: moved and copied lines keep their origin) with the **size passes
ignored** (``--ignore-revs-file``: commits that only shortened or rearranged existing code, so a
line they touched is blamed on the commit that wrote what it says):

* **at filing**: written at or before the filing commit, or by the issue's own commits (the
  refactor into one configuration and one inverse-Hessian interface, the LSQR stop, the input
  checks of the public verbs);
* **improved since**: later commits that made a feature of the filing cheaper or sturdier
  without adding one (the step search's grid, inexact Newton, the Hessian-sample preset, …);
* **later features**: every other later commit.

Code lines are those that are not blank, a comment or a docstring. Needs the git history (a full
clone); prints a markdown table::

    python bench/engine_size.py [--rev HEAD] [--per-file]
"""

from __future__ import annotations

import argparse
import ast
import collections
import io
import re
import subprocess
import tempfile
import tokenize

FILING = "8a060bf"

#: Commits that only shortened or rearranged code (blame looks through them).
SIZE_PASSES = re.compile(
    r"^(Engine core, smaller|config: ruff|steps\.py: rewrap|Engine core: the defaults table)"
)

#: The engine-core issue's own commits.
ISSUE = re.compile(
    r"^(Engine core|Docs: the method|Edits: the ~100-line|mypy clean|One Edit class|gif/cache\.py \(865|LSQR|"
    r"The work counter|Edit computes its cache|Undamped GIF|Review mend: one scatter|Review mends: the restricted|"
    r"config: |gif/method_choice\.py: the module|method_choice, gif\._util: comments|newton: the report's|"
    r"Engine: (?!inputs may be named)|Edits: a lowrank|gif\.select refuses|gif\.models\.build: sizes|"
    r"gif\.io\.save_dataset)"
)

#: Later commits that improved a feature of the filing without adding one.
IMPROVEMENTS = re.compile(
    r"^(Cheaper step search|Step search: |Inexact Newton|GIF edits sample 512|ParamSpace writes skip|"
    r"The step search evaluates at most|solver=\"auto\" is resolved inside Edit|Shared Hessian pool)"
)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def code_lines(text: str) -> set[int]:
    """Numbers of the lines of ``text`` that hold code (not blank, comment-only or a docstring)."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    comments = {
        tok.start[0]
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT and not tok.line[: tok.start[1]].strip()
    }
    lines = text.splitlines()
    return {i for i, line in enumerate(lines, 1) if line.strip() and i not in docstrings | comments}


def sources(rev: str) -> list[str]:
    return sorted(p for p in git("ls-tree", "-r", "--name-only", rev, "gif").split() if p.endswith(".py"))


def split(rev: str) -> dict[str, collections.Counter]:
    """Per file: lines (and ``<kind>_code`` lines) by kind: filing, improved, later."""
    log = [
        line.split(" ", 1)
        for line in git("log", "--format=%H %s", f"{FILING}..{rev}", "--", "gif").splitlines()
    ]
    kind = {
        h: "filing" if ISSUE.match(s) else "improved" if IMPROVEMENTS.match(s) else "later" for h, s in log
    }
    with tempfile.NamedTemporaryFile("w", suffix=".revs") as ignored:
        ignored.write("".join(f"{h}\n" for h, s in log if SIZE_PASSES.match(s)))
        ignored.flush()
        out = {}
        for path in sources(rev):
            code = code_lines(git("show", f"{rev}:{path}"))
            blame = git("blame", "-w", "-M", "-C", "-C", "--ignore-revs-file", ignored.name, "--line-porcelain", rev,
                        "--", path)  # fmt: skip
            counts: collections.Counter = collections.Counter()
            for match in re.finditer(r"^\^?([0-9a-f]{39,40}) \d+ (\d+)", blame, re.M):
                which = kind.get(match.group(1), "filing")  # not a later commit: at or before the filing
                counts[which] += 1
                counts[f"{which}_code"] += int(match.group(2)) in code
            out[path] = counts
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--per-file", action="store_true")
    args = parser.parse_args()
    files = split(args.rev)
    total: collections.Counter = sum(files.values(), collections.Counter())
    at_filing = sources(FILING)
    filing_lines = sum(len(git("show", f"{FILING}:{p}").splitlines()) for p in at_filing)
    filing_code = sum(len(code_lines(git("show", f"{FILING}:{p}"))) for p in at_filing)
    kinds = ("filing", "improved", "later")
    rows = [
        (f"gif/ at the filing ({FILING})", filing_lines, filing_code),
        (f"gif/ at {args.rev}", sum(total[k] for k in kinds), sum(total[f"{k}_code"] for k in kinds)),
        ("  the features at filing", total["filing"], total["filing_code"]),
        ("  their improvements since", total["improved"], total["improved_code"]),
        ("  later features", total["later"], total["later_code"]),
    ]
    print("| part | lines | code lines |\n|---|---|---|")
    for name, lines, code in rows:
        print(f"| {name} | {lines:,} | {code:,} |")
    if args.per_file:
        print("\n| file | at filing | improved | later |\n|---|---|---|---|")
        for path, c in sorted(files.items(), key=lambda item: -item[1]["later"]):
            print(f"| {path} | {c['filing']} | {c['improved']} | {c['later']} |")


if __name__ == "__main__":
    main()
