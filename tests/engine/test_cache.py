"""gif.cache: keys, backends, locking, and cached edits that match uncached ones bit for bit."""

from __future__ import annotations

import copy
import multiprocessing
import os
import threading
import time

import pytest
import torch
from torch import nn

import gif
import gif.edit_sets
from gif.cache import (
    DiskCache,
    MemoryCache,
    check_key,
    data_digest,
    decode,
    encode,
    loss_id,
    make_key,
    model_digest,
    tensor_digest,
)
from gif.errors import Cancelled
from gif.hessian import HessianOperator

# -- a tiny trained problem on which class removal takes several Newton steps --------------------


def trained_problem(n=60, hidden=8, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), (x, y)


@pytest.fixture(scope="module")
def problem():
    return trained_problem()


@pytest.fixture(params=["memory", "disk"])
def cache(request, tmp_path):
    return MemoryCache() if request.param == "memory" else DiskCache(tmp_path / "cache")


class Work:
    """Counts gradients, HVPs and forward evaluations actually run (wrapping the engine)."""

    def __init__(self, monkeypatch) -> None:
        self.gradients = self.hvps = self.evaluations = 0
        gradient, hvp, evaluate = HessianOperator.gradient, HessianOperator.hvp, gif.edit_sets.evaluate

        def counted_gradient(op):
            self.gradients += 1
            return gradient(op)

        def counted_hvp(op, v):
            self.hvps += 1
            return hvp(op, v)

        def counted_evaluate(*args, **kwargs):
            self.evaluations += 1
            return evaluate(*args, **kwargs)

        passes = gif.inverse.kfac._passes

        def counted_passes(*args):  # a Kronecker factor pass: one backward pass per yield
            for item in passes(*args):
                self.gradients += 1
                yield item

        monkeypatch.setattr(gif.inverse.kfac, "_passes", counted_passes)
        monkeypatch.setattr(HessianOperator, "gradient", counted_gradient)
        monkeypatch.setattr(HessianOperator, "hvp", counted_hvp)
        monkeypatch.setattr(gif.edit_sets, "evaluate", counted_evaluate)

    def reset(self) -> None:
        self.gradients = self.hvps = self.evaluations = 0


def comparable(report: dict) -> dict:
    """A report without what legitimately differs between runs: wall-clock times, the cache
    section, and the work counters (what *this* call computed)."""
    out = copy.deepcopy(
        {k: v for k, v in report.items() if k not in ("timings", "cache", "gradients", "hvps", "work")}
    )
    for step in out["newton_steps"]:
        step["solver"].pop("seconds")
    for name in ("seconds", "cache"):  # an edit on the head's features: when, and whence, they came
        out.get("head_features", {}).pop(name, None)
    return out


def assert_same_edit(a: gif.EditResult, b: gif.EditResult) -> None:
    assert torch.equal(a.delta, b.delta)
    assert torch.equal(a.params, b.params)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert comparable(a.report) == comparable(b.report)
    assert (a.lowrank is None) == (b.lowrank is None)
    if a.lowrank is not None:
        assert torch.equal(a.lowrank.eigenvectors, b.lowrank.eigenvectors)
        assert torch.equal(a.lowrank.eigenvalues, b.lowrank.eigenvalues)


# -- keys ----------------------------------------------------------------------------------------


def test_keys_are_stable_across_processes_and_versions_are_pinned():
    # Golden values: a key must not depend on the interpreter (hash seeds, dict order). If the
    # engine's numerics or key layout change on purpose, bump CACHE_VERSION and update these
    # (version 2: ihvp and lowrank keys hold the whole solve configuration).
    assert make_key("gradient", {"model": "m", "damping": 0.01, "chunks": [3, 2]}) == (
        "gradient:735b6bbd59b8b7f8b43e027c7fe00ca78a5bf58d03f9acc2feec2fc93165f2d8"
    )
    assert make_key("gradient", {"chunks": [3, 2], "damping": 0.01, "model": "m"}) == make_key(
        "gradient", {"model": "m", "damping": 0.01, "chunks": [3, 2]}
    )
    assert tensor_digest(torch.arange(4, dtype=torch.float32)) == (
        "308cdf16932dad53cb40bedf1b956cb879e17790a47d0a204bd5d0e6836ae8bc"
    )


def test_keys_are_namespaced_by_kind_and_sensitive_to_every_option():
    parts = {"model": "m", "damping": 0.01, "solver": "lsqr", "seed": 0, "tol": 1e-4}
    keys = {make_key(kind, parts) for kind in gif.cache.KINDS}
    assert len(keys) == len(gif.cache.KINDS)
    assert all(check_key(k)[0] in gif.cache.KINDS for k in keys)
    base = make_key("ihvp", parts)
    for name, value in [
        ("damping", 0.010000000000000002),
        ("solver", "cg"),
        ("seed", 1),
        ("tol", 1e-5),
        ("model", "m2"),
    ]:
        assert make_key("ihvp", {**parts, name: value}) != base, name
    assert make_key("ihvp", {**parts, "extra": None}) != base
    with pytest.raises(ValueError, match="unknown cache kind"):
        make_key("factors", parts)
    with pytest.raises(TypeError, match="cannot put"):
        make_key("ihvp", {"f": object()})


def test_model_digest_covers_values_buffers_and_architecture():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).eval()
    d = model_digest(model)
    assert model_digest(copy.deepcopy(model)) == d
    one_param = copy.deepcopy(model)
    with torch.no_grad():
        w = one_param[0].weight
        w[1, 2] = torch.nextafter(w[1, 2], torch.tensor(10.0))  # one ulp of one entry
    assert model_digest(one_param) != d
    one_buffer = copy.deepcopy(model)
    one_buffer[1].running_var[0] += 1e-3
    assert model_digest(one_buffer) != d
    other_activation = copy.deepcopy(model)
    other_activation[2] = nn.ReLU()  # same parameters and names, different function
    assert model_digest(other_activation) != d
    frozen = copy.deepcopy(model)
    frozen[0].bias.requires_grad_(False)  # θ changes when a parameter is frozen
    assert model_digest(frozen) != d
    assert model_digest(copy.deepcopy(model).double()) != d


def test_data_digest_covers_every_sample_label_dtype_and_batching():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 3, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    d = data_digest((x, y))
    assert data_digest((x.clone(), y.clone())) == d
    assert data_digest((x[::1].contiguous(), y)) == d
    x2 = x.clone()
    x2[7, 1] += 1e-6
    assert data_digest((x2, y)) != d
    y2 = y.clone()
    y2[3] = (y2[3] + 1) % 3
    assert data_digest((x, y2)) != d
    assert data_digest((x.double(), y)) != d
    assert data_digest((x[:9], y[:9])) != d
    assert data_digest([(x[:5], y[:5]), (x[5:], y[5:])]) != d  # chunking changes round-off
    assert data_digest((x.T.contiguous().T, y)) == d  # layout does not matter, values do


def test_loss_ids():
    assert loss_id(None) == loss_id(gif.hessian.cross_entropy) == loss_id(nn.functional.cross_entropy)
    assert loss_id(lambda o, t: nn.functional.cross_entropy(o, t)) is None

    def smooth(o, t):
        return nn.functional.cross_entropy(o, t, label_smoothing=0.1)

    smooth.cache_key = "ce-smooth-0.1"
    assert loss_id(smooth) == "ce-smooth-0.1"


# -- backends ------------------------------------------------------------------------------------


def sample_tensors():
    return {
        "f32": torch.randn(3, 4),
        "f64": torch.randn(5, dtype=torch.float64),
        "bf16": torch.randn(2, 2).to(torch.bfloat16),
        "i64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "strided": torch.randn(4, 4).T,  # not contiguous
    }


def test_round_trip_preserves_bits_dtypes_shapes_and_meta(cache):
    tensors = sample_tensors()
    shared = torch.randn(3)
    tensors.update(a=shared, b=shared)  # the same storage twice
    meta = {"residual": 1e-17, "history": [0.1, float("inf")], "note": "é", "nested": {"n": 3}, "ok": True}
    key = make_key("gradient", {"x": 1})
    assert cache.get(key) is None
    cache.put(key, tensors, meta)
    entry = cache.get(key)
    assert entry is not None and entry.hit and entry.key == key
    assert set(entry.tensors) == set(tensors)
    for name, t in tensors.items():
        got = entry.tensors[name]
        assert got.dtype == t.dtype and got.shape == t.shape and got.device.type == "cpu"
        assert torch.equal(got, t), name
    assert entry.meta == meta
    # stored values are copies: neither side's later writes leak into the other
    shared.add_(1.0)
    entry.tensors["f32"].zero_()
    again = cache.get(key)
    assert not torch.equal(again.tensors["a"], shared) and torch.equal(again.tensors["f32"], tensors["f32"])


def test_encode_decode_and_device(cache):
    tensors, meta = {"v": torch.arange(4.0)}, {"k": [1, 2]}
    got, got_meta = decode(encode(tensors, meta), device="cpu")
    assert torch.equal(got["v"], tensors["v"]) and got_meta == meta
    key = make_key("ihvp", {"y": 2})
    cache.put(key, tensors, meta)
    assert cache.get(key, device=torch.device("cpu")).tensors["v"].device.type == "cpu"


def test_compute_once_computes_then_hits(cache):
    calls = []

    def fn():
        calls.append(1)
        return {"v": torch.ones(2)}, {"n": len(calls)}

    key = make_key("selection", {"z": 3})
    first = cache.compute_once(key, fn)
    second = cache.compute_once(key, fn)
    assert len(calls) == 1
    assert first.status == "computed" and not first.hit and second.status == "hit"
    assert torch.equal(first.tensors["v"], second.tensors["v"]) and second.meta == {"n": 1}
    with pytest.raises(ValueError, match="not a cache key"):
        cache.compute_once("gradient:xyz", fn)


def test_a_failing_computation_stores_nothing_and_releases_the_lock(cache):
    key = make_key("ihvp", {"fails": True})

    def boom():
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        cache.compute_once(key, boom)
    assert cache.get(key) is None
    done = []
    t = threading.Thread(
        target=lambda: done.append(cache.compute_once(key, lambda: ({"v": torch.zeros(1)}, {})))
    )
    t.start()
    t.join(timeout=10)
    assert done and done[0].status == "computed"


def test_threads_compute_an_entry_once(cache):
    key = make_key("lowrank", {"threads": 1})
    calls, barrier, out = [], threading.Barrier(4), []

    def fn():
        calls.append(1)
        time.sleep(0.2)
        return {"v": torch.arange(3.0)}, {}

    def run():
        barrier.wait()
        out.append(cache.compute_once(key, fn))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(calls) == 1
    assert sorted(e.status for e in out) == ["computed", "waited", "waited", "waited"]


def _compute_in_process(root, key, counter, barrier, results):
    torch.set_num_threads(1)
    cache = DiskCache(root)
    barrier.wait()

    def fn():
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # hold the lock long enough for the other process to queue behind it
        return {"v": torch.arange(5.0) * 2}, {"by": os.getpid()}

    entry = cache.compute_once(key, fn)
    results.put((entry.status, entry.meta["by"], entry.tensors["v"].tolist()))


def test_two_processes_compute_a_disk_entry_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    key = make_key("lowrank", {"processes": 2})
    counter = tmp_path / "computed.txt"
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_compute_in_process, args=(str(tmp_path / "c"), key, str(counter), barrier, results)
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1
    assert sorted(s for s, _, _ in got) == ["computed", "waited"]
    assert not list((tmp_path / "c" / "locks").iterdir())  # lock files do not pile up
    assert got[0][1:] == got[1][1:] and got[0][2] == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_disk_writes_are_atomic_and_torn_entries_are_dropped(tmp_path):
    cache = DiskCache(tmp_path)
    key = make_key("gradient", {"torn": 1})
    cache.put(key, {"v": torch.randn(100)}, {"a": 1})
    assert not list(tmp_path.rglob("*.part"))
    path = cache.path(key)
    path.write_bytes(path.read_bytes()[:50])  # what a crash mid-write could leave without fsync
    assert cache.get(key) is None and not path.exists()
    entry = cache.compute_once(key, lambda: ({"v": torch.ones(1)}, {}))
    assert entry.status == "computed" and cache.get(key) is not None


def test_disk_lru_eviction(tmp_path):
    one = len(encode({"v": torch.zeros(1000)}, {}))
    cache = DiskCache(tmp_path, max_bytes=int(2.5 * one))
    keys = [make_key("gradient", {"i": i}) for i in range(3)]
    cache.put(keys[0], {"v": torch.zeros(1000)})
    cache.put(keys[1], {"v": torch.ones(1000)})
    past = time.time() - 100
    os.utime(cache.path(keys[0]), (past, past))
    os.utime(cache.path(keys[1]), (past + 1, past + 1))
    assert cache.get(keys[0]) is not None  # refreshes keys[0]: keys[1] is now the oldest
    cache.put(keys[2], {"v": torch.full((1000,), 2.0)})
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None and cache.get(keys[2]) is not None
    assert cache.size_bytes() <= 2.5 * one


def test_memory_lru_eviction():
    cache = MemoryCache(max_bytes=2 * 4000)
    keys = [make_key("gradient", {"i": i}) for i in range(3)]
    cache.put(keys[0], {"v": torch.zeros(1000)})
    cache.put(keys[1], {"v": torch.zeros(1000)})
    cache.get(keys[0])
    cache.put(keys[2], {"v": torch.zeros(1000)})
    assert cache.keys() == [keys[0], keys[2]]


def test_an_unavailable_store_never_fails_the_computation(tmp_path):
    class Broken(DiskCache):
        def put(self, key, tensors, meta=None):
            raise OSError(28, "No space left on device")

        def get(self, key, *, device=None):
            raise OSError(5, "Input/output error")

    entry = Broken(tmp_path).compute_once(
        make_key("ihvp", {"q": 1}), lambda: ({"v": torch.ones(2)}, {"m": 1})
    )
    assert entry.status == "computed" and entry.meta == {"m": 1}


# -- cached edits --------------------------------------------------------------------------------


REMOVALS = [
    pytest.param({"method": "gif"}, id="gif-lsqr-search"),
    pytest.param({}, id="auto-fif-head"),
    pytest.param({"method": "if"}, id="if-cg"),
    pytest.param({"method": "fif", "step": "newton", "newton_steps": 2}, id="fif-newton"),
    pytest.param({"method": "sif"}, id="sif"),
    pytest.param({"method": "gif", "solver": "lowrank", "rank": 8}, id="gif-lowrank"),
    pytest.param({"method": "gif", "solver": "kfac"}, id="gif-kfac"),
    pytest.param({"method": "if", "solver": "ekfac"}, id="if-ekfac"),
]


@pytest.mark.parametrize("options", REMOVALS)
def test_warm_removal_equals_cold_and_computes_nothing(problem, cache, options, monkeypatch):
    model, train = problem
    work = Work(monkeypatch)
    options = {"newton_steps": 4, **options}
    plain = gif.remove(model, train, {"class": 1}, **options)
    work.reset()
    cold = gif.remove(model, train, {"class": 1}, cache=cache, **options)
    cold_work = (work.gradients, work.hvps, work.evaluations)
    assert cold_work[0] > 0 and cold_work[2] > 0
    assert cold.report["gradients"] + cold.report["hvps"] > 0
    # the report's one work counter agrees with an independent count of the calls
    assert cold.report["work"] == dict(
        zip(("gradients", "hvps", "forward_evaluations"), cold_work, strict=True)
    )
    if options.get("step", "search") == "search":
        # the later-step gradient path is covered, unless the first step reached the objective's max
        steps = cold.report["newton_steps"]
        assert len(steps) >= 2 or steps[0]["step"]["objective"] == 1.0
    # a cold run only finds what it measured itself (the step search revisits points)
    assert {h["kind"] for h in cold.report["cache"]["hits"]} <= {"evaluation"}
    work.reset()
    warm = gif.remove(model, train, {"class": 1}, cache=cache, **options)
    assert (work.gradients, work.hvps, work.evaluations) == (0, 0, 0)
    assert warm.report["gradients"] == 0 and warm.report["hvps"] == 0
    assert warm.report["work"] == {"gradients": 0, "hvps": 0, "forward_evaluations": 0}
    assert warm.report["cache"]["misses"] == []
    looked_up = cold.report["cache"]["hits"] + cold.report["cache"]["misses"]
    assert sorted(map(str, warm.report["cache"]["hits"])) == sorted(map(str, looked_up))
    counts = warm.report["cache"]["counts"]
    assert sum(c["hit"] for c in counts.values()) == len(warm.report["cache"]["hits"])
    assert all(c["miss"] == c["wait"] == 0 for c in counts.values())
    kinds = {h["kind"] for h in warm.report["cache"]["hits"]}
    assert {"selection", "gradient", "ihvp", "evaluation"} <= kinds
    fitted = {"lowrank", "kfac", "ekfac"}
    assert kinds & fitted == ({options["solver"]} & fitted if "solver" in options else set())
    assert_same_edit(cold, warm)
    # and a cache changes nothing about the answer or the report
    assert_same_edit(plain, cold)
    assert (plain.report["gradients"], plain.report["hvps"]) == (
        cold.report["gradients"],
        cold.report["hvps"],
    )
    assert "cache" not in plain.report


def test_warm_sample_removal_with_given_validation(problem, monkeypatch):
    model, (x, y) = problem
    gen = torch.Generator().manual_seed(9)
    val = (torch.randn(12, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (12,), generator=gen))
    cache = MemoryCache()
    cold = gif.remove(model, (x, y), [2, 5, 17, 30], validation=val, cache=cache, newton_steps=3)
    work = Work(monkeypatch)
    warm = gif.remove(model, (x, y), [2, 5, 17, 30], validation=val, cache=cache, newton_steps=3)
    assert (work.gradients, work.hvps, work.evaluations) == (0, 0, 0)
    assert_same_edit(cold, warm)
    other_val = (val[0], (val[1] + 1) % 3)  # same inputs, other labels: metrics must be recomputed
    again = gif.remove(model, (x, y), [2, 5, 17, 30], validation=other_val, cache=cache, newton_steps=3)
    assert any(m["kind"] == "evaluation" for m in again.report["cache"]["misses"])


@pytest.mark.parametrize("options", [{}, {"method": "gif", "ratio": 0.3}], ids=["if-default", "gif"])
def test_warm_relabel_equals_cold_and_computes_nothing(problem, cache, options, monkeypatch):
    model, (x, y) = problem
    idx = torch.tensor([1, 5, 9, 20])
    new = (y[idx] + 1) % 3
    plain = gif.relabel(model, (x, y), idx, new, newton_steps=3, **options)
    cold = gif.relabel(model, (x, y), idx, new, newton_steps=3, cache=cache, **options)
    assert len(cold.report["newton_steps"]) >= 2
    work = Work(monkeypatch)
    warm = gif.relabel(model, (x, y), idx, new, newton_steps=3, cache=cache, **options)
    assert (work.gradients, work.hvps, work.evaluations) == (0, 0, 0)
    assert warm.report["gradients"] == warm.report["hvps"] == 0 and warm.report["cache"]["misses"] == []
    assert_same_edit(cold, warm)
    assert_same_edit(plain, cold)
    # other new labels for the same samples: a different target gradient, not a stale hit
    other = gif.relabel(model, (x, y), idx, (y[idx] + 2) % 3, newton_steps=3, cache=cache, **options)
    assert not torch.equal(other.delta, warm.delta)
    assert any(m["kind"] == "gradient" for m in other.report["cache"]["misses"])


def test_a_related_request_reuses_the_lowrank_fit(problem, monkeypatch):
    """Same checkpoint, data and forget set (so the same Hessian sample), other method and
    damping: the curvature fit is found, only the cheap solves on it run."""
    model, train = problem
    cache = MemoryCache()
    first = gif.remove(
        model, train, {"class": 1}, method="gif", solver="lowrank", rank=8, newton_steps=3, cache=cache
    )
    assert first.report["solver"]["hvps"] > 0
    work = Work(monkeypatch)
    related = gif.remove(
        model,
        train,
        {"class": 1},
        solver="lowrank",
        rank=8,
        newton_steps=3,
        cache=cache,
        method="fif",
        damping=0.05,
    )
    assert work.hvps == 0 and related.report["hvps"] == 0
    hits = {h["kind"] for h in related.report["cache"]["hits"]}
    misses = {m["kind"] for m in related.report["cache"]["misses"]}
    assert "lowrank" in hits and "ihvp" in misses and "lowrank" not in misses
    # exactly what the engine does when handed the fit explicitly
    explicit = gif.remove(
        model,
        train,
        {"class": 1},
        solver="lowrank",
        rank=8,
        newton_steps=3,
        method="fif",
        damping=0.05,
        lowrank=first.lowrank,
    )
    assert torch.equal(related.delta, explicit.delta)
    assert comparable(related.report) == comparable(explicit.report)
    # relabelling the same samples uses the same Hessian sample, hence the same fit, on the same
    # curvature: the relabel's IF defaults to the Gauss-Newton matrix, whose fit is another
    _, (x, y) = problem
    idx = gif.class_indices(y, 1)
    options = {"solver": "lowrank", "rank": 8, "newton_steps": 2, "cache": cache}
    relabel = gif.relabel(model, (x, y), idx, torch.zeros_like(idx), curvature="hessian", **options)
    assert "lowrank" in {h["kind"] for h in relabel.report["cache"]["hits"]}
    gauss_newton = gif.relabel(model, (x, y), idx, torch.zeros_like(idx), **options)
    assert gauss_newton.report["options"]["curvature"] == "gauss_newton"
    assert "lowrank" in {m["kind"] for m in gauss_newton.report["cache"]["misses"]}


def test_a_different_forget_set_is_a_different_curvature(problem):
    """With ``hessian_pool="untouched"`` the Hessian sample is drawn from the retained data, so
    another forget set means another Hessian: content addressing does not substitute a fit of
    different data."""
    model, train = problem
    cache = MemoryCache()
    options = {"solver": "lowrank", "rank": 8, "newton_steps": 1, "cache": cache, "hessian_pool": "untouched"}
    gif.remove(model, train, [3, 7, 8], **options)
    other = gif.remove(model, train, [4, 9, 10], **options)
    assert "lowrank" in {m["kind"] for m in other.report["cache"]["misses"]}
    assert other.report["options"]["hessian_pool"] == "untouched"
    # while a caller can still opt in to reuse by passing the fit (EditResult.lowrank)
    reuse = gif.remove(
        model,
        train,
        [4, 9, 10],
        solver="lowrank",
        rank=8,
        newton_steps=1,
        cache=cache,
        lowrank=other.lowrank,
        damping=0.1,
        hessian_pool="untouched",
    )
    assert reuse.report["hvps"] == 0


def test_with_the_shared_hessian_pool_other_forget_sets_reuse_the_fit(problem, monkeypatch):
    """``hessian_pool="all"``: the Hessian sample does not depend on what is edited, so a removal
    of other samples — or a relabel — finds the fit and computes no HVP for it."""
    model, train = problem
    cache = MemoryCache()
    first = gif.remove(
        model, train, [3, 7, 8], solver="lowrank", rank=8, newton_steps=1, cache=cache, hessian_pool="all"
    )
    assert "lowrank" in {m["kind"] for m in first.report["cache"]["misses"]}
    work = Work(monkeypatch)
    other = gif.remove(
        model, train, [4, 9, 10], solver="lowrank", rank=8, newton_steps=1, cache=cache, hessian_pool="all"
    )
    assert "lowrank" in {h["kind"] for h in other.report["cache"]["hits"]}
    assert work.hvps == 0 and other.report["hvps"] == 0
    assert torch.equal(other.lowrank.eigenvectors, first.lowrank.eigenvectors)
    _, (x, y) = problem
    relabel = gif.relabel(
        model,
        (x, y),
        [5, 6],
        (y[[5, 6]] + 1) % 3,
        solver="lowrank",
        rank=8,
        newton_steps=1,
        cache=cache,
        hessian_pool="all",
        curvature="hessian",  # the relabel's IF preset takes the Gauss-Newton matrix: another fit
    )
    assert "lowrank" in {h["kind"] for h in relabel.report["cache"]["hits"]}


def test_a_kronecker_fit_serves_edits_under_either_curvature(problem):
    """K-FAC approximates the Gauss-Newton matrix whatever ``curvature`` says: a removal's fit
    (GIF: the Hessian) serves a relabel's (IF: the Gauss-Newton preset)."""
    model, (x, y) = problem
    cache = MemoryCache()
    options = {
        "solver": "kfac",
        "newton_steps": 1,
        "cache": cache,
        "hessian_pool": "all",
        "hessian_samples": 64,
    }
    removal = gif.remove(model, (x, y), [3, 7, 8], method="gif", **options)
    assert removal.report["options"]["curvature"] == "hessian"
    assert "kfac" in {m["kind"] for m in removal.report["cache"]["misses"]}
    relabel = gif.relabel(model, (x, y), [5, 6], (y[[5, 6]] + 1) % 3, method="if", **options)
    assert relabel.report["options"]["curvature"] == "gauss_newton"
    assert "kfac" in {h["kind"] for h in relabel.report["cache"]["hits"]}


def test_an_edit_knows_whether_its_solvers_fit_is_cached(problem):
    """``Edit.has_fit``: False before the fit and for a solver that fits nothing, True once an
    edit of the same checkpoint and Hessian data has fitted it, False for another checkpoint."""
    from gif.config import EditConfig, resolve
    from gif.hessian import cross_entropy
    from gif.newton import Edit, Request, Task, relabel_loss

    model, (x, y) = problem
    rows, new = torch.tensor([5, 6]), (y[[5, 6]] + 1) % 3

    def edit(on: nn.Module, cache, **options) -> Edit:
        task = Task(kind="relabel", index=rows, target=(x[rows], torch.stack([y[rows], new], dim=1)),
                    target_loss=relabel_loss(cross_entropy), scale=2 / len(y), new_labels=new)  # fmt: skip
        config = resolve("relabel", EditConfig, None, {"method": "if", "hessian_samples": 64, **options})
        return Edit(Request(on, (x, y), task, cross_entropy, cache=cache), config)

    cache = MemoryCache()
    assert not edit(model, cache, solver="kfac").has_fit()
    assert not edit(model, None, solver="kfac").has_fit()
    fitted = gif.relabel(model, (x, y), rows, new, method="if", solver="kfac", hessian_samples=64,
                         newton_steps=1, cache=cache)  # fmt: skip
    assert "kfac" in {m["kind"] for m in fitted.report["cache"]["misses"]}
    assert edit(model, cache, solver="kfac").has_fit()
    assert not edit(model, cache, solver="cg").has_fit()  # CG fits nothing
    assert not edit(fitted.model, cache, solver="kfac").has_fit()  # another checkpoint


def test_by_default_lowrank_uses_the_shared_pool_and_iterative_solvers_the_untouched_one(problem):
    """``hessian_pool="auto"``: the fit of ``solver="lowrank"`` serves later edits of other
    samples; an iterative solve keeps to the samples the edit leaves alone."""
    model, train = problem
    cache = MemoryCache()
    first = gif.remove(model, train, [3, 7, 8], solver="lowrank", rank=8, newton_steps=1, cache=cache)
    other = gif.remove(model, train, [4, 9, 10], solver="lowrank", rank=8, newton_steps=1, cache=cache)
    assert first.report["options"]["hessian_pool"] == other.report["options"]["hessian_pool"] == "all"
    assert "lowrank" in {h["kind"] for h in other.report["cache"]["hits"]}
    iterative = gif.remove(model, train, [3, 7, 8], newton_steps=1)
    assert iterative.report["options"]["hessian_pool"] == "untouched"


def test_an_evicted_fit_behind_cached_solves_is_refitted(problem, monkeypatch):
    model, train = problem
    cache = MemoryCache()
    options = {"method": "gif", "solver": "lowrank", "rank": 8, "newton_steps": 3}
    cold = gif.remove(model, train, {"class": 1}, cache=cache, **options)
    for key in cache.keys():
        if key.startswith("lowrank:"):
            cache.delete(key)
    work = Work(monkeypatch)
    warm = gif.remove(model, train, {"class": 1}, cache=cache, **options)
    assert work.hvps == cold.lowrank.hvps and warm.report["hvps"] == cold.lowrank.hvps
    assert [m["kind"] for m in warm.report["cache"]["misses"]] == ["lowrank"]
    assert torch.equal(warm.delta, cold.delta)
    assert torch.equal(warm.lowrank.eigenvectors, cold.lowrank.eigenvectors)


def test_a_caller_given_fit_is_keyed_by_its_content(problem):
    model, train = problem
    fit = gif.remove(model, train, [3, 7, 8], solver="lowrank", rank=8, newton_steps=1).lowrank
    cache = MemoryCache()
    a = gif.remove(model, train, [3, 7, 8], solver="lowrank", lowrank=fit, newton_steps=1, cache=cache)
    b = gif.remove(model, train, [3, 7, 8], solver="lowrank", lowrank=fit, newton_steps=1, cache=cache)
    assert "ihvp" in {h["kind"] for h in b.report["cache"]["hits"]}
    changed = copy.deepcopy(fit)
    changed.eigenvalues = changed.eigenvalues * 2
    c = gif.remove(model, train, [3, 7, 8], solver="lowrank", lowrank=changed, newton_steps=1, cache=cache)
    assert "ihvp" in {m["kind"] for m in c.report["cache"]["misses"]}
    assert torch.equal(a.delta, b.delta) and not torch.equal(a.delta, c.delta)


def test_a_changed_checkpoint_misses_everything(problem):
    model, train = problem
    cache = MemoryCache()
    gif.remove(model, train, [3, 7, 8], newton_steps=2, cache=cache)
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged[2].bias[0] += 1e-9
    out = gif.remove(nudged, train, [3, 7, 8], newton_steps=2, cache=cache)
    own = {m["key"] for m in out.report["cache"]["misses"]}
    assert all(h["key"] in own for h in out.report["cache"]["hits"])  # only its own revisited points
    assert out.report["hvps"] > 0


def test_an_unnamed_custom_loss_bypasses_the_cache(problem):
    model, train = problem
    cache = MemoryCache()

    def loss(o, t):
        return nn.functional.cross_entropy(o, t)

    out = gif.remove(model, train, [3, 7, 8], loss_fn=loss, newton_steps=1, cache=cache)
    assert out.report["cache"] == {
        "hits": [],
        "misses": [],
        "counts": {},
        "bypassed": "loss_fn has no `cache_key` attribute",
    }
    assert len(cache) == 0
    loss.cache_key = "plain-ce"
    named = gif.remove(model, train, [3, 7, 8], loss_fn=loss, newton_steps=1, cache=cache)
    assert len(cache) > 0 and named.report["cache"]["misses"]
    assert torch.equal(named.delta, out.delta)


def test_stats_count_hits_waits_and_misses_per_kind():
    stats = gif.cache.CacheStats()
    g, e = make_key("gradient", {"a": 1}), make_key("evaluation", {"a": 1})
    for key, status in [(g, "computed"), (g, "hit"), (g, "waited"), (e, "hit")]:
        stats.record(key, status)
    out = stats.as_dict()
    assert out["counts"] == {
        "gradient": {"hit": 1, "wait": 1, "miss": 1},
        "evaluation": {"hit": 1, "wait": 0, "miss": 0},
    }
    assert out["misses"] == [{"kind": "gradient", "key": g.split(":")[1][:16]}]
    assert {"kind": "gradient", "key": g.split(":")[1][:16], "waited": True} in out["hits"]


def test_concurrent_identical_edits_compute_each_entry_once(problem, tmp_path):
    model, train = problem
    cache = DiskCache(tmp_path)
    out, barrier = [], threading.Barrier(2)

    def run():
        barrier.wait()
        out.append(gif.remove(model, train, {"class": 1}, newton_steps=3, cache=cache))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    a, b = out
    assert torch.equal(a.delta, b.delta)
    computed = [m["key"] for r in out for m in r.report["cache"]["misses"]]
    assert len(computed) == len(set(computed))  # no entry was computed by both
    assert (
        a.report["hvps"] + b.report["hvps"]
        == gif.remove(model, train, {"class": 1}, newton_steps=3).report["hvps"]
    )
