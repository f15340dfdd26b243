"""The training loop's small steps without Ray: the clock, the one stop decision, the epoch's bookkeeping,
and the self-supervised pairs (one process: rank 0 of a world of one)."""

from __future__ import annotations

import math
import time

import torch

from raeae.corrupt import blind_spot, recorrupt
from raeae.model import ModelConfig, build_model
from raeae.train_config import TrainConfig
from raeae.train_loop import Clock, Progress, advance, decide_stop

START = Progress()


def test_the_clock_counts_the_whole_run_resumes_included():
    assert not Clock(math.inf).limited and Clock(math.inf).fraction_used() == 0.0
    resumed = Clock(60.0, spent_s=45.0)  # 45 s spent before this attempt
    assert resumed.limited and 14.0 < resumed.left() <= 15.0 and resumed.fraction_used() >= 0.75
    assert Clock(1.0, spent_s=2.0).left() < 0 and Clock(1.0, spent_s=2.0).fraction_used() == 1.0


def test_stopping_is_one_decision_with_its_reason():
    cfg = TrainConfig(data="x", output="y", epochs=3, max_minutes=0, patience=2)
    running = Clock(math.inf)
    assert decide_stop(cfg, Progress(epoch=1, best_epoch=1), running) == ""
    assert decide_stop(cfg, Progress(epoch=3, best_epoch=3), running) == "epochs"
    assert decide_stop(cfg, Progress(epoch=2, best_epoch=0), running) == "patience"  # two epochs with nothing better
    timed = TrainConfig(data="x", output="y", epochs=0, max_minutes=1.0)
    assert decide_stop(timed, Progress(epoch=1, best_epoch=1), Clock(60.0, spent_s=61.0)) == "time budget"
    assert decide_stop(timed, Progress(epoch=1, best_epoch=1), Clock(60.0)) == ""


def test_an_epoch_is_recorded_and_the_best_weights_kept():
    model = build_model(ModelConfig(patch_size=4, hidden=(8,), latent=4, decoder_hidden=(8,)))
    p1 = advance(START, {"epoch": 1, "train_loss": 0.1, "val_psnr": 25.0, "note": "text is not history"}, model)
    assert p1.epoch == 1 and p1.best_epoch == 1 and p1.best_score == 25.0
    assert p1.history == ({"epoch": 1, "train_loss": 0.1, "val_psnr": 25.0},)
    kept = p1.best_model["encoder.0.weight"].clone()
    with torch.no_grad():
        model.encoder[0].weight.add_(1.0)
    p2 = advance(p1, {"epoch": 2, "train_loss": 0.09, "val_psnr": 24.0}, model)  # worse: the best stays
    assert p2.best_epoch == 1 and torch.equal(p2.best_model["encoder.0.weight"], kept)
    p3 = advance(p2, {"epoch": 3, "val_ss_loss": 0.5}, model)  # a loss ranks as minus itself, not as a PSNR
    assert p3.best_epoch == 1 and len(p3.history) == 3
    ss = advance(START, {"epoch": 1, "val_ss_loss": 0.5}, model)
    assert ss.best_score == -0.5 and advance(ss, {"epoch": 2, "val_ss_loss": 0.4}, model).best_epoch == 2


def test_self_supervised_pairs():
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(200, 1, 8, 8)
    inputs, targets = recorrupt(y, 0.1, 0.5, gen)
    assert torch.allclose((inputs - y) / 0.5, -(targets - y) * 0.5, atol=1e-6)  # +αz and -z/α of one z
    masked, mask = blind_spot(y, 0.125, gen)
    assert mask.shape == (200, 1, 8, 8) and abs(float(mask.float().mean()) - 0.125) < 0.02
    assert torch.equal(masked[~mask.expand_as(y)], y[~mask.expand_as(y)])  # only hidden pixels change
    assert (masked[mask.expand_as(y)] != y[mask.expand_as(y)]).float().mean() > 0.9


def test_the_clock_moves():
    clock = Clock(10.0)
    before = clock.elapsed()
    time.sleep(0.01)
    assert clock.elapsed() > before


def test_progress_round_trips_through_a_checkpoint_dict_and_reads_old_ones():
    p = Progress(epoch=3, history=({"epoch": 1},), best_score=27.5, best_epoch=2, stopped="epochs", resumed_at=(1,),
                 elapsed_s=12.0)
    assert Progress.from_dict(p.to_dict()) == p
    old = {"epoch": 2, "history": [], "best_val_psnr": 26.0, "best_epoch": 2, "best_model": None, "stopped": "",
           "resumed_at": [], "elapsed_s": 3.0}  # written before the score had its own name
    assert Progress.from_dict(old).best_score == 26.0
