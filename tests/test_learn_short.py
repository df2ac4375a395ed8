"""A shortened `make learn-check`: the small preset, 100 steps, one seed, on a small digit world.

The full check (600 steps, 2 seeds) is kept out of `make test`; this one asserts a smaller gain
that the random-init teacher does not get: J&F of label propagation on held-out videos rises by
at least 2 points over the same model at init, L_DINO leaves ln K (the uniform collapse the
reference's LayerScale 1e-5 gives at this scale), and no collapse monitor fires.
"""

from __future__ import annotations

import json
import math

import pytest

from tools import learn_check


@pytest.mark.slow
def test_short_learning_check_beats_random_init(tmp_path):
    out = tmp_path / "lc"
    code = learn_check.main(["--out", str(out), "--seeds", "0", "--train", "64", "--val", "10", "--davis", "2",
                             "train.max_steps=100", "train.log_every=5"])
    assert code == 0
    report = json.loads((out / "learn_check.json").read_text())
    run = report["runs"][0]
    ln_k = report["ln_k"]
    assert ln_k == pytest.approx(math.log(256))
    assert run["trained"]["jf"] >= run["random"]["jf"] + 0.02, run
    assert report["loss_dino_final"] < 0.9 * ln_k
    assert report["targets"]["no_collapse"], run["collapse"]
    assert (out / "learn_check.png").stat().st_size > 10_000
