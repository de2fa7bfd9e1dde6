"""fastgan.train: the training command end to end on the CPU, at tiny widths and resolutions.

TINY runs 4x4 then 8x8 with 32 images per segment at batch 8: 4 steps at 4x4, 4 steps of
fade-in, 4 steps of stabilization at 8x8.
"""

import json
import math
import os
import socket

import pytest
import torch

from fastgan.train import checkpoints, cli, loop
from fastgan.train.config import resolve_defaults
from fastgan.train.data import ImageFolder, draw_discs
from fastgan.train.schedule import Schedule

TINY = ["--resolution", "8", "--kimg-per-phase", "0.032", "--batch", "8", "--fmap-base", "64",
        "--fmap-max", "16", "--metric-images", "32", "--log-every", "1", "--device", "cpu"]
STEP_KEYS = ("step", "kimg", "phase", "resolution", "alpha", "batch", "lr_g", "lr_d", "loss_d",
             "loss_g", "gp", "drift", "real_score", "fake_score")


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tiny steps run faster so on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _records(out):
    with open(os.path.join(out, "log.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def _steps(records):
    return [{k: r[k] for k in STEP_KEYS} for r in records if "loss_d" in r]


def _png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def test_schedule_grows_with_fade_in_then_stabilization():
    s = Schedule(16, 1.0)
    assert s.resolutions == [4, 8, 16] and s.total_images == 5000
    assert s.at(0) == s.at(500) == s.at(999)
    assert (s.at(999).resolution, s.at(999).alpha, s.at(999).fading) == (4, 1.0, False)
    assert (s.at(1000).resolution, s.at(1000).alpha, s.at(1000).fading) == (8, 0.0, True)
    assert s.at(1250).alpha == 0.25 and s.at(1250).phase == 1
    assert (s.at(2000).resolution, s.at(2000).alpha, s.at(2000).fading) == (8, 1.0, False)
    assert s.at(3500).alpha == 0.5 and s.at(3500).resolution == 16
    assert s.at(4999).fading is False and s.at(6000).resolution == 16
    assert [s.phase_end(p) for p in range(3)] == [1000, 3000, 5000]


def _needs_train_extra(*modules):
    """The `train` extra is installed in CI (requirements-dev.txt); the GPU machine has none of
    it, and there these tests skip (test_runs_without_the_train_extra covers that case)."""
    for name in modules or ("PIL", "torchvision", "matplotlib"):
        pytest.importorskip(name)


def test_short_run_writes_grid_plot_log_and_checkpoint(tmp_path, capsys):
    _needs_train_extra()
    out = str(tmp_path / "run")
    summary = cli.main(TINY + ["--out", out])
    assert "done: 0.1 kimg in 12 steps" in capsys.readouterr().out
    for name in ("samples-phase0-4x4.png", "samples-phase1-8x8.png", "samples-final.png"):
        w, h = _png_size(os.path.join(out, name))
        assert w > 2 * h * 0.9 and h >= 4 * 8  # 4x4 grid of samples beside 4x4 grid of reals
    assert _png_size(os.path.join(out, "progress.png"))[0] > 500
    records = _records(out)
    steps = _steps(records)
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert [r["resolution"] for r in steps] == [4] * 4 + [8] * 8
    assert [r["alpha"] for r in steps[4:]] == [0.0, 0.25, 0.5, 0.75] + [1.0] * 4
    assert all(math.isfinite(v) for r in steps for v in r.values())
    evals = [r for r in records if "swd" in r]
    assert [(r["event"], r["step"], r["resolution"]) for r in evals] == [
        ("start", 0, 4), ("phase_end", 4, 4), ("phase_end", 12, 8)]
    assert summary["swd_start"] == evals[0]["swd"] and summary["swd_end"] == evals[-1]["swd"]
    ckpt = checkpoints.load(os.path.join(out, "checkpoint.pt"))
    assert ckpt["step"] == 12 and ckpt["images"] == 96
    assert set(ckpt) >= {"G", "D", "G_ema", "opt_g", "opt_d", "rng", "run"}
    assert not os.path.exists(os.path.join(out, "checkpoint.pt.tmp"))


@pytest.mark.parametrize("loss", ["logistic", "hinge", "lsgan", "ragan"])
def test_every_loss_trains(tmp_path, loss):
    out = str(tmp_path / loss)
    loop.run(cli.parse_args(TINY + ["--out", out, "--loss", loss, "--kimg-per-phase", "0.016",
                                    "--lr-g", "0.002", "--lr-d", "0.003"]))
    steps = [r for r in _records(out) if "loss_d" in r]
    assert len(steps) == 6 and all(math.isfinite(r["loss_d"]) for r in steps)
    assert steps[0]["lr_g"] == 0.002 and steps[0]["lr_d"] == 0.003
    assert ("r1" in steps[0]) == (loss == "logistic")  # R1 by default only for logistic


def test_resume_after_interruption_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    args = TINY + ["--checkpoint-kimg", "0.016"]  # a checkpoint every 2 steps
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    cli.main(args + ["--out", whole])

    calls = {"n": 0}
    real_g_step = loop.g_step

    def interrupted_g_step(*a, **kw):  # Ctrl-C in the 7th G step (its D step already done)
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_g_step(*a, **kw)

    monkeypatch.setattr(loop, "g_step", interrupted_g_step)
    with pytest.raises(SystemExit) as exc:
        cli.main(args + ["--out", broken])
    assert exc.value.code == 130
    assert checkpoints.load(os.path.join(broken, "checkpoint.pt"))["step"] == 6
    monkeypatch.setattr(loop, "g_step", real_g_step)
    cli.main(args + ["--out", broken, "--resume"])

    assert _steps(_records(broken)) == _steps(_records(whole))  # exactly, every value
    swd = [[r["swd"] for r in _records(out) if "swd" in r] for out in (whole, broken)]
    assert swd[0] == swd[1]
    a, b = (checkpoints.load(os.path.join(out, "checkpoint.pt")) for out in (whole, broken))
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k}"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_step_grads(trainer):
    """Gradients of one D and one G step in the fade-in to 8x8 (alpha 0.5): the D step's stay
    in D's .grad (the G step freezes D), the G step's in G's."""
    stage = trainer.schedule.at(48)
    assert stage.fading and stage.alpha == 0.5
    trainer.train_step(stage)
    return {f"{net}.{name}": p.grad.clone() for net, m in (("D", trainer.D), ("G", trainer.G))
            for name, p in m.named_parameters() if p.grad is not None}


def _ddp_worker(rank, world, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from fastgan.train.distributed import setup

    w = setup("cpu")
    try:
        grads = _one_step_grads(loop.Trainer(cli.parse_args(TINY + ["--out", out + "-grads"]), w))
    finally:
        w.close()
    torch.save(grads, f"{out}-grads{rank}.pt")
    loop.run(cli.parse_args(TINY + ["--out", out]))  # the whole command, 2 processes


def test_two_gloo_processes_give_one_process_gradients(tmp_path):
    world, out = 2, str(tmp_path / "ddp")
    torch.multiprocessing.spawn(_ddp_worker, args=(world, _free_port(), out), nprocs=world)
    from fastgan.train.distributed import World

    want = _one_step_grads(loop.Trainer(cli.parse_args(TINY + ["--out", str(tmp_path / "one")]),
                                        World()))
    assert any(k.startswith("D.") for k in want) and any(k.startswith("G.") for k in want)
    for rank in range(world):
        got = torch.load(f"{out}-grads{rank}.pt")
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=k)

    single = str(tmp_path / "single")
    loop.run(cli.parse_args(TINY + ["--out", single]))
    a, b = _steps(_records(single)), _steps(_records(out))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):  # rank 0 logs the losses averaged over the processes
        for k in ("loss_d", "loss_g", "gp"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-3, abs=1e-5), (ra["step"], k)


def _bad_png(folder, name="broken.png"):
    (folder / name).write_bytes(b"not an image")


@pytest.mark.parametrize("case", ["resolution", "empty_data", "unreadable_data", "missing_data",
                                  "out_holds_run", "resume_other_config", "resume_missing",
                                  "resume_into_a_file", "batch"])
def test_bad_input_is_refused_before_any_work(tmp_path, case):
    out = tmp_path / "out"
    args = TINY + ["--out", str(out)]
    data = tmp_path / "data"
    data.mkdir()
    if case == "resolution":
        args += ["--resolution", "48"]
        words = "--resolution must be a power of two"
    elif case == "empty_data":
        args += ["--data", str(data)]
        words = "holds no image files"
    elif case == "unreadable_data":
        _needs_train_extra("PIL")
        _bad_png(data)
        args += ["--data", str(data)]
        words = "none of its 1 image files could be read"
    elif case == "missing_data":
        args += ["--data", str(tmp_path / "nowhere")]
        words = "is not a folder"
    elif case == "out_holds_run":
        out.mkdir()
        (out / "log.jsonl").write_text("{}\n")
        words = "already holds a run .*pass --resume"
    elif case == "resume_other_config":
        out.mkdir()
        saved = resolve_defaults(cli.parse_args(args + ["--batch", "16"]), False, 1)
        checkpoints.save(str(out / "checkpoint.pt"), {"run": saved.run_values(), "G": {}})
        args += ["--resume", "--loss", "wgan-gp"]
        words = "another configuration \\(--batch: checkpoint 16, now 8\\)"
    elif case == "resume_missing":
        args += ["--resume"]
        words = "no checkpoint at"
    elif case == "resume_into_a_file":
        elsewhere = tmp_path / "elsewhere.pt"
        saved = resolve_defaults(cli.parse_args(args), False, 1)
        checkpoints.save(str(elsewhere), {"run": saved.run_values(), "G": {}})
        out.write_text("")
        args += ["--resume", str(elsewhere)]
        words = "is a file, not a folder"
    else:
        args += ["--batch", "6"]
        words = "--batch: the batch at 4x4 is 6"
    before = sorted(os.listdir(tmp_path))
    files_in_out = sorted(os.listdir(out)) if out.is_dir() else None
    with pytest.warns(UserWarning, match="broken.png") if case == "unreadable_data" else \
            _no_context():
        with pytest.raises(ValueError, match=words):
            loop.run(cli.parse_args(args))
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
    assert (sorted(os.listdir(out)) if out.is_dir() else None) == files_in_out


class _no_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_command_line_error_exits_2_with_the_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(TINY + ["--out", str(tmp_path / "o"), "--resolution", "12"])
    assert exc.value.code == 2
    assert "--resolution must be a power of two >= 8" in capsys.readouterr().err


def _write_png(path, pixels):
    from PIL import Image

    Image.fromarray(pixels).save(path)


def test_image_folder_crops_resizes_and_skips_unreadable_files(tmp_path):
    _needs_train_extra("PIL")
    import numpy as np

    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 255  # white centre square, black sides that the crop removes
    _write_png(tmp_path / "a.png", wide)
    _write_png(tmp_path / "b.jpg", np.full((64, 48, 3), 128, np.uint8))
    (tmp_path / "sub").mkdir()
    _bad_png(tmp_path / "sub")
    (tmp_path / "notes.txt").write_text("not an image, not a warning")
    with pytest.warns(UserWarning, match="skipping unreadable image .*broken.png") as rec:
        folder = ImageFolder(str(tmp_path), 16)
    assert len(rec) == 1 and len(folder) == 2
    assert torch.equal(folder.images[0], torch.full((3, 16, 16), 255, dtype=torch.uint8))
    assert folder.images[1].unique().tolist() == [128]
    x = folder.batch(5, 8, torch.Generator().manual_seed(0))
    assert x.shape == (5, 3, 8, 8) and x.min() >= -1 and x.max() <= 1


def test_run_on_an_image_folder(tmp_path):
    _needs_train_extra("PIL")
    data = tmp_path / "data"
    data.mkdir()
    discs = draw_discs(6, 24, torch.Generator().manual_seed(0))
    for i, img in enumerate(discs):
        pixels = ((img.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        _write_png(data / f"{i}.png", pixels)
    out = str(tmp_path / "out")
    loop.run(cli.parse_args(TINY + ["--out", out, "--data", str(data), "--kimg-per-phase",
                                    "0.016"]))
    assert len(_steps(_records(out))) == 6


def test_example_script_runs_the_command(tmp_path):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_progan.py"
    spec = importlib.util.spec_from_file_location("train_progan", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    summary = mod.main(TINY + ["--out", str(tmp_path / "ex"), "--kimg-per-phase", "0.016"])
    assert summary["steps"] == 6


def test_plain_generator_twin_equals_the_generator():
    """The benchmark's plain-torch G: same keys, same initial weights, same images."""
    from fastgan.models import Generator, PlainGenerator

    torch.manual_seed(0)
    fast = Generator(16, fmap_base=64, fmap_max=16, growing=True).double()
    torch.manual_seed(0)
    plain = PlainGenerator(16, fmap_base=64, fmap_max=16, growing=True).double()
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert not any(type(m).__module__.startswith("fastgan.nn") for m in plain.modules())
    z = torch.randn(3, fast.latent_size, dtype=torch.float64)
    for kw in ({}, {"resolution": 8}, {"alpha": 0.3}):
        torch.testing.assert_close(plain(z, **kw), fast(z, **kw), rtol=1e-12, atol=1e-12)


def test_runs_without_the_train_extra(tmp_path, monkeypatch):
    """Without tqdm, torchvision and matplotlib (the GPU machine has none of them) the run still
    trains, logs and checkpoints; the grids and the plot are skipped with one warning each."""
    import sys

    from fastgan.train import outputs

    for name in ("tqdm", "torchvision", "torchvision.utils", "matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    monkeypatch.setattr(outputs, "_warned", set())
    out = tmp_path / "bare"
    with pytest.warns(UserWarning) as rec:
        loop.run(cli.parse_args(TINY + ["--out", str(out), "--kimg-per-phase", "0.016"]))
    messages = [str(w.message) for w in rec]
    assert sum("sample grid skipped: torchvision is not installed" in m for m in messages) == 1
    assert sum("progress plot skipped: matplotlib is not installed" in m for m in messages) == 1
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "log.jsonl"]
    assert len(_steps(_records(str(out)))) == 6


def test_a_shortened_default_run_learns(tmp_path):
    """The default run (discs, WGAN-GP, CPU defaults) cut to 8x8 and 3 kimg per phase (~10 s):
    the sliced Wasserstein distance at the end is clearly below the start's. The full default
    run's numbers are in the README."""
    out = str(tmp_path / "learn")
    summary = loop.run(cli.parse_args(["--out", out, "--device", "cpu", "--resolution", "8",
                                       "--kimg-per-phase", "3", "--metric-images", "128"]))
    assert summary["swd_end"] < 0.8 * summary["swd_start"], summary


def test_bf16_autocast_and_channels_last_run(tmp_path):
    out = str(tmp_path / "amp")
    loop.run(cli.parse_args(TINY + ["--out", out, "--kimg-per-phase", "0.016", "--amp",
                                    "--channels-last"]))
    steps = _steps(_records(out))
    assert len(steps) == 6 and all(math.isfinite(r["loss_d"]) for r in steps)


def test_console_script_exits_0(tmp_path, monkeypatch):
    """pyproject's fastgan-train entry point; the wrapper passes its return value to sys.exit."""
    import pathlib
    import sys

    pyproject = (pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'fastgan-train = "fastgan.train.cli:console_main"' in pyproject
    monkeypatch.setattr(sys, "argv", ["fastgan-train"] + TINY + [
        "--out", str(tmp_path / "cs"), "--kimg-per-phase", "0.016"])
    assert cli.console_main() == 0


def test_summary_line_without_a_distance(tmp_path, capsys, monkeypatch):
    """A resumed run that has nothing left to train measures no distance at its end, and under
    torchrun only rank 0 measures any: the command still ends normally, and only rank 0
    prints the summary."""
    out = str(tmp_path / "done")
    args = TINY + ["--out", out, "--kimg-per-phase", "0.016"]
    cli.main(args)
    capsys.readouterr()
    summary = cli.main(args + ["--resume"])
    assert summary["swd_end"] is None and "done: " in capsys.readouterr().out
    monkeypatch.setattr(cli, "run", lambda cfg: dict(summary, swd_start=None))
    monkeypatch.setenv("RANK", "1")
    assert cli.main(args + ["--resume"])["swd_start"] is None
    assert capsys.readouterr().out == ""


def test_readme_torchrun_command_passes_the_checks():
    """The README's multi-GPU command must not be refused: under N processes every
    resolution's global batch has to split into groups of 4 per process."""
    import pathlib
    import shlex

    from fastgan.train.config import check

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = [ln for ln in readme.splitlines() if ln.startswith("torchrun ")]
    assert lines
    for line in lines:
        words = shlex.split(line.split("#")[0])
        nproc = int(words[words.index("--nproc_per_node") + 1])
        argv = words[words.index("fastgan.train") + 1:]
        check(resolve_defaults(cli.parse_args(argv), gpu=True, world_size=nproc))


def test_resume_from_a_checkpoint_into_a_new_out(tmp_path):
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    args = TINY + ["--kimg-per-phase", "0.016", "--checkpoint-kimg", "0.008"]
    cli.main(args + ["--out", first])
    ckpt = os.path.join(first, "checkpoint.pt")
    summary = cli.main(args + ["--out", second, "--resume", ckpt])
    assert summary["images"] == checkpoints.load(ckpt)["images"]
    assert os.path.isdir(second)


def test_resume_refusal_names_the_process_count_as_torchrun_takes_it():
    """There is no --world-size option: a resume under another number of processes names
    torchrun's --nproc_per_node."""
    diff = checkpoints.differences({"world_size": 1, "seed": 0}, {"world_size": 2, "seed": 0})
    assert diff == ["processes (torchrun --nproc_per_node): checkpoint 1, now 2"]
    assert checkpoints.differences({"amp": False}, {"amp": True}) == [
        "--amp: checkpoint False, now True"]
