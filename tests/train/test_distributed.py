"""Training on several processes: torchrun starts them, DistributedDataParallel averages their
gradients, every rank gets an equal share of each batch, and only rank 0 writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from dmtest import dm, dm_ok

from datamoat.models import load_model
from datamoat.train.distributed import without_option
from datamoat.train.epoch import RankBatches, rank_slice
from datamoat.train.loop import TrainConfig
from datamoat.train.run import train_in_workspace


@pytest.mark.parametrize("n", [2, 5, 37, 64, 65, 129])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_rank_gets_an_equal_share_of_every_batch(n, world):
    batch = 16
    steps = n // batch + (1 if n % batch > 1 else 0)  # train's rule: a final batch of one is dropped
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shares = []
    for r in range(world):
        sampler = RankBatches(n, batch, steps, r, world)
        sampler.perm = perm  # as `epoch_batches` sets it before each epoch
        shares.append(list(sampler))
    assert all(len(s) == steps for s in shares)  # the same number of steps on every rank: nobody waits
    for step in range(steps):
        sizes = [len(s[step]) for s in shares]
        assert min(sizes) >= 2 and max(sizes) - min(sizes) <= 1, sizes  # BatchNorm needs 2; equal work
        together = sorted(i for s in shares for i in s[step])
        whole = perm[step * batch : (step + 1) * batch].tolist()
        assert set(whole) <= set(together)  # every sample of the global batch is trained on
        assert len(together) == max(len(whole), 2 * world)  # padded only as far as 2 per rank
    if world == 1:  # one process: exactly the global batches
        assert shares[0] == [perm[s * batch : (s + 1) * batch].tolist() for s in range(steps)]
    assert [rank_slice(perm, s, batch, world - 1, world).tolist() for s in range(steps)] == shares[-1]


def test_a_relaunched_command_drops_nproc_in_both_spellings():
    assert without_option(["train", "--nproc", "2", "--json"], "--nproc") == ["train", "--json"]
    assert without_option(["train", "--nproc=4", "-d", "x"], "--nproc") == ["train", "-d", "x"]


def test_bad_launches_are_refused_once_before_any_process_starts(ws, digits):
    r = dm(ws.root, "train", "--data", digits.id, "--nproc", "0")
    assert r.returncode == 2 and "--nproc must be at least 1" in r.stderr
    r = dm(ws.root, "train", "--data", "no-such-data", "--nproc", "2")
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "torchrun" not in r.stderr.lower()
    r = dm(ws.root, "train", "--data", digits.id, "--nproc", "2", env={"WORLD_SIZE": "2"})
    assert r.returncode == 2 and "under torchrun leave it out" in r.stderr
    assert ws.rows("runs") == []


@pytest.mark.slow
def test_a_rank_that_fails_fails_the_command(ws, digits):
    # batch 2 is under 2 samples per process on 2 processes: every rank refuses, torchrun exits non-zero
    r = dm(ws.root, "train", "--data", digits.id, "--batch-size", "2", "--nproc", "2", "--json")
    assert r.returncode != 0 and r.stdout == "" and "give each of 2 processes 2" in r.stderr
    assert [x["status"] for x in ws.rows("runs")] == ["failed"] and ws.rows("models") == []


TRAIN_SCRIPT = """
import json, sys, torch
from datamoat.data.dataset import load_dataset
from datamoat.models import new_model
from datamoat.train import distributed
from datamoat.train.loop import TrainConfig, train
from datamoat.workspace import Workspace

ds = load_dataset(Workspace.open(sys.argv[1]), sys.argv[2])
arch, augment, sync = sys.argv[4], sys.argv[5], sys.argv[6] == "sync"
cfg = TrainConfig(
    epochs=2, batch_size=40, max_train_samples=1200, threads=1, patience=0, augment=augment, sync_batchnorm=sync
)
# As the commands do: leave the process group after a barrier, so no rank closes its connections
# while its peer still works (gloo then aborts the peer).
with distributed.leaving_together():
    m = train(new_model(arch, ds, dropout=0.0), ds, cfg, progress=False)
    rank, world = distributed.rank_world()
torch.save(m.net.state_dict(), f"{sys.argv[3]}-{world}-{rank}.pt")
json.dump(m.history, open(f"{sys.argv[3]}-{world}-{rank}.json", "w"))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "augment", "sync"),
    [("mlp", "none", "sync"), ("cnn_small", "crop_flip", "sync"), ("cnn_small", "crop_flip", "per-rank")],
)
def test_two_gloo_processes_learn_what_one_process_learns(ws, digits, tmp_path, arch, augment, sync):
    # No dropout, 1200 samples in global batches of 40: each rank's mean gradient over its 20
    # samples, averaged by DDP, is the one process's mean over all 40. BatchNorm synchronised over
    # the ranks normalises by the 40 as one process does, and each sample gets the augmentation one
    # process draws for it; BatchNorm over each rank's 20 alone (the control) trains another model.
    script = tmp_path / "fit.py"
    script.write_text(TRAIN_SCRIPT)
    out = tmp_path / "m"
    run = [str(script), str(ws.root), digits.id, str(out), arch, augment, sync]
    subprocess.run([sys.executable, *run], check=True, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    r = subprocess.run([*torchrun, *run], timeout=300, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one, r0, r1 = (torch.load(f"{out}-{w}-{r}.pt") for w, r in ((1, 0), (2, 0), (2, 1)))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # every rank ends with the same model
    # Each tensor's largest difference, relative to its largest value (BatchNorm's running variance is large).
    gaps = {
        k: ((one[k].double() - r0[k].double()).abs().max() / one[k].double().abs().max().clamp(min=1e-6)).item()
        for k in one
    }
    gap = max(gaps.values())
    if sync == "per-rank":
        assert gap > 0.1, gap  # half-batch statistics: not what one process trains
        return
    # Only the order of float sums differs; BatchNorm's division by the batch's spread amplifies that.
    assert gap < (1e-3 if arch == "mlp" else 1e-2), gap
    h1, h2 = (json.loads((tmp_path / f"m-{w}-0.json").read_text()) for w in (1, 2))
    assert (h1["processes"], h2["processes"]) == (1, 2)
    assert h2["train_samples"] == h1["train_samples"] == 1200
    for a, b in zip(h1["curve"], h2["curve"], strict=True):  # the curve covers every rank's samples
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_only_rank_0_writes_and_a_run_resumes_on_another_number_of_processes(ws, digits):
    cfg = TrainConfig(epochs=2, patience=0, threads=1)

    def stop_after_first(point):
        if point["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a 1-process run, interrupted after its first epoch
        train_in_workspace(ws, digits.id, "cnn_small", cfg, on_epoch=stop_after_first, progress=False)
    (run,) = ws.rows("runs")
    assert run["status"] == "interrupted"
    first = torch.load(ws.root / "runs" / run["id"] / "checkpoint.pt", weights_only=True)["curve"][0]

    # Both ranks open the one workspace and race through the run; only rank 0 may write.
    r = dm_ok(ws.root, "train", "--resume", run["id"], "--nproc", "2", "--json")
    out = json.loads(r.stdout)  # exactly one JSON object on stdout, whatever the two ranks print
    assert out["run_id"] == run["id"] and [p["epoch"] for p in out["curve"]] == [1, 2]
    assert out["curve"][0] == first  # resumed from the 1-process checkpoint, not retrained
    assert [(x["id"], x["status"]) for x in ws.rows("runs")] == [(run["id"], "completed")]
    assert [m["id"] for m in ws.rows("models")] == [out["model_id"]]
    assert load_model(ws, out["model_id"]).history["processes"] == 2
    assert out["val_accuracy"] > 0.5  # chance is 0.1

    args = ["--data", digits.id, "--arch", "cnn_small", "--epochs", "1", "--nproc", "2", "--no-sync-batchnorm"]
    fresh = json.loads(dm_ok(ws.root, "train", *args, "--json").stdout)
    assert ws.resolve("runs", fresh["run_id"])["config"]["train"]["sync_batchnorm"] is False
    assert len(ws.rows("runs")) == 2 and len(ws.rows("models")) == 2
    assert {x["id"] for x in ws.rows("runs")} == {run["id"], fresh["run_id"]}
    assert sorted(p.name for p in (ws.root / "runs" / fresh["run_id"]).iterdir()) == ["checkpoint.pt"]


@pytest.mark.slow
def test_distill_and_prune_fine_tune_on_two_processes_and_save_once(ws, digits):
    from datamoat.models import save_model
    from datamoat.models.model import new_model
    from datamoat.train.loop import train

    teacher = save_model(
        ws, train(new_model("cnn_small", digits), digits, TrainConfig(epochs=2, threads=1), progress=False), name="t"
    )
    r = dm_ok(ws.root, "distill", teacher.id, "--arch", "mlp", "--epochs", "1", "--nproc", "2", "--json")
    student = json.loads(r.stdout)
    r = dm_ok(ws.root, "prune", teacher.id, "--method", "structured", "--ratio", "0.5", "--epochs", "1",
              "--latency", "none", "--nproc", "2", "--json")  # fmt: skip
    pruned = json.loads(r.stdout)
    assert sorted(m["id"] for m in ws.rows("models")) == sorted([teacher.id, student["model_id"], pruned["model_id"]])
    assert load_model(ws, student["model_id"]).history["processes"] == 2
    assert pruned["params_after"] < pruned["params_before"] and student["val_accuracy"] > 0.3


@pytest.mark.slow
def test_data_issues_gives_each_process_whole_folds_and_finds_what_one_process_finds(ws, digits, tmp_path):
    out = tmp_path / "issues.json"
    args = ("data", "issues", digits.id, "--folds", "2", "--epochs", "3", "--threads", "1")
    r = dm_ok(ws.root, *args, "--output", out, "--json", "--nproc", "2")
    two = json.loads(r.stdout)  # one object on stdout from two processes
    one = json.loads(dm_ok(ws.root, *args, "--json").stdout)
    assert two["examined"] == one["examined"] == int((digits.split == 0).sum())
    # Each fold model trained by one process alone, as the single process trains it: the same
    # probabilities, so the same issues in the same order (under DDP they would differ).
    assert two["oof_accuracy"] == one["oof_accuracy"] > 0.5
    assert two["label_issues"] == one["label_issues"] and two["outliers"] == one["outliers"]
    written = json.loads(out.read_text())["label_issues"]  # all of them; stdout shows the top 20
    assert written[:20] == one["label_issues"] and len(written) == one["counts"]["label_issues"]
    # More processes than folds: each fold trains on all three under DDP, and still reports once.
    three = json.loads(dm_ok(ws.root, *args, "--json", "--nproc", "3").stdout)
    assert three["examined"] == one["examined"] and abs(three["oof_accuracy"] - one["oof_accuracy"]) < 0.1


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_by_the_readmes_command_train_what_one_node_with_two_processes_trains(ws, digits, tmp_path):
    # The README's multi-node form, both "nodes" on this machine: two torchrun agents meet through
    # c10d rendezvous, so the process on node 1 has LOCAL_RANK 0 but RANK 1 and must not write.
    args = ["train", "--data", digits.id, "--arch", "mlp", "--epochs", "2", "--batch-size", "40", "--threads", "1"]
    args += ["--seed", "3", "--json"]
    port, home = free_port(), str(ws.root)
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node)]
            + ["--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]
            + ["--rdzv-id", "two-nodes", "-m", "datamoat", "--home", home, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    (out0, err0), (out1, err1) = (p.communicate(timeout=300) for p in nodes)
    assert [p.returncode for p in nodes] == [0, 0], (err0[-2000:], err1[-2000:])
    multi = json.loads(out0)  # the node holding rank 0 prints the one JSON object
    assert out1 == ""
    assert [x["id"] for x in ws.rows("runs")] == [multi["run_id"]]
    assert [m["id"] for m in ws.rows("models")] == [multi["model_id"]]
    assert load_model(ws, multi["model_id"]).history["processes"] == 2

    # The same training as one node with two processes: the same ranks, the same weights.
    single = json.loads(dm_ok(ws.root, *args[:-1], "--nproc", "2", "--json").stdout)
    a, b = (load_model(ws, r["model_id"]).net.state_dict() for r in (multi, single))
    assert all(torch.equal(a[k], b[k]) for k in a)
    timeless = [
        [{k: v for k, v in p.items() if k not in ("seconds", "samples_per_s")} for p in r["curve"]]
        for r in (multi, single)
    ]
    assert timeless[0] == timeless[1]


GLOBAL_BN = """
import json, sys, torch, torch.distributed as dist
from datamoat.train.distributed import synced_batchnorm
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
x = torch.randn(8, 3, 4, 4, generator=g) * 0.5  # (B, C, H, W): the global batch, the same on every rank
x[:, 0] += 1000.0  # a channel far from zero mean, where E[x^2] - E[x]^2 in fp32 loses its digits
w = torch.randn(8, 3, 4, 4, generator=g)  # the loss's weights, so every output gets its own gradient
bn, ref = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
share = slice(rank * 8 // world, (rank + 1) * 8 // world)
errs = {"y": 0.0, "grad": 0.0, "running_var": 0.0, "running_mean": 0.0}
with synced_batchnorm(bn) as layers:
    for _ in range(3):
        xs = x[share].clone().requires_grad_()
        y = bn(xs)
        (y * w[share]).sum().backward()
        ys, gs = [torch.empty_like(y) for _ in range(world)], [torch.empty_like(y) for _ in range(world)]
        dist.all_gather(ys, y.detach().contiguous())
        dist.all_gather(gs, xs.grad.contiguous())
        xr = x.clone().requires_grad_()
        yr = ref(xr)
        (yr * w).sum().backward()
        errs["y"] = max(errs["y"], float((torch.cat(ys) - yr).abs().max()))
        errs["grad"] = max(errs["grad"], float((torch.cat(gs) - xr.grad).abs().max() / xr.grad.abs().max()))
for k in ("running_var", "running_mean"):
    errs[k] = float(((getattr(bn, k) - getattr(ref, k)).abs() / getattr(ref, k).abs().clamp_min(1e-3)).max())
if rank == 0:
    json.dump({"layers": layers, **errs}, open(sys.argv[1], "w"))
dist.barrier()  # leave together: gloo aborts a rank whose peer closes its connections first
dist.destroy_process_group()
"""


def test_two_ranks_normalise_by_the_global_batch_as_one_batchnorm_does_far_from_zero_mean(tmp_path):
    script, out = tmp_path / "bn.py", tmp_path / "bn.json"
    script.write_text(GLOBAL_BN)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    r = subprocess.run([*torchrun, str(script), str(out)], timeout=120, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["layers"] == 1
    # Outputs to the input's own fp32 resolution at 1000 (6e-5, over a spread of 0.5); gradients and the
    # running statistics to 1e-4 of their size.
    assert got["y"] < 2e-3 and got["grad"] < 1e-4, got
    assert got["running_var"] < 1e-4 and got["running_mean"] < 1e-4, got
