"""The run's mode (LFM_MODE) and the progress switch (LFM_PROGRESS)."""

import pytest

from lfm_core import pretrained, runtime


@pytest.mark.parametrize("value, mode, quick, rehearsal", [
    ("quick", "quick", True, False),
    ("full", "full", False, False),
    (" full ", "full", False, False),
    ("", "full", False, False),
    ("rehearsal", "rehearsal", False, True),
    ("pretrain", "quick", True, False),   # pretraining runs the quick sizes
])
def test_mode_from_lfm_mode(monkeypatch, value, mode, quick, rehearsal):
    monkeypatch.setenv("LFM_MODE", value)
    assert runtime.mode() == mode
    assert runtime.is_quick() is quick and runtime.is_rehearsal() is rehearsal
    assert runtime.mode_setting() == (value.strip() or "full")
    assert pretrained.pretraining() is (value == "pretrain")
    assert f"mode     : {mode}" in runtime.describe()


def test_mode_unset_is_full(monkeypatch):
    monkeypatch.delenv("LFM_MODE", raising=False)
    assert runtime.mode() == runtime.mode_setting() == "full" and not runtime.is_quick()


@pytest.mark.parametrize("value", ["1", "fast", "Quick", "quick,rehearsal"])
def test_bad_mode_names_the_variable_and_the_modes(monkeypatch, value):
    monkeypatch.setenv("LFM_MODE", value)
    for call in (runtime.mode, runtime.mode_setting, runtime.is_quick, runtime.is_rehearsal, pretrained.pretraining):
        with pytest.raises(ValueError, match="LFM_MODE=.*quick, full, rehearsal, pretrain"):
            call()


def test_a_notebook_config_reads_as_one_dict_per_mode(monkeypatch):
    configs = {"quick": dict(steps=500), "full": dict(steps=20_000)}
    monkeypatch.setenv("LFM_MODE", "pretrain")
    assert configs[runtime.mode()] == {"steps": 500}
    monkeypatch.setenv("LFM_MODE", "full")
    assert configs[runtime.mode()] == {"steps": 20_000}
    assert configs[runtime.mode(configs)] == {"steps": 20_000}   # a mode the notebook has: chosen as before
    monkeypatch.setenv("LFM_MODE", "rehearsal")   # a mode it lacks: a clear error, not KeyError('rehearsal')
    with pytest.raises(ValueError, match="LFM_MODE=rehearsal: this notebook has settings for quick and full mode "
                                         "only .*notebooks 04 and 05"):
        runtime.mode(configs)
    monkeypatch.setenv("LFM_MODE", "pretrain")
    assert runtime.mode({"quick": {}}) == "quick"
    with pytest.raises(ValueError, match="LFM_MODE=pretrain: this notebook has settings for full mode only$"):
        runtime.mode(["full"])


@pytest.mark.parametrize("supported, error, match", [
    ("quick", TypeError, "supported must be a collection of mode names"),
    ([1, 2], TypeError, "supported must be a collection of mode names"),
    (["quick", "fast"], ValueError, r"supported names modes that do not exist: \['fast'\]"),
    ((), ValueError, r"supported must name at least one mode .*got \(\)"),
])
def test_bad_supported_modes(monkeypatch, supported, error, match):
    monkeypatch.setenv("LFM_MODE", "quick")
    with pytest.raises(error, match=match):
        runtime.mode(supported)


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False),
                                       ("", False), ("off", False)])
def test_progress_switch(monkeypatch, value, on):
    monkeypatch.setenv("LFM_PROGRESS", value)
    assert runtime.show_progress() is on


def test_progress_on_by_default_and_bad_values_refused(monkeypatch):
    monkeypatch.delenv("LFM_PROGRESS", raising=False)
    assert runtime.show_progress() is True
    monkeypatch.setenv("LFM_PROGRESS", "maybe")
    with pytest.raises(ValueError, match="LFM_PROGRESS"):
        runtime.show_progress()


@pytest.mark.parametrize("value", ["99999999999999999999999", str(2**64)])
def test_a_seed_beyond_64_bits_in_lfm_seed_is_refused_naming_it(monkeypatch, value):
    monkeypatch.setenv("LFM_SEED", value)
    with pytest.raises(ValueError, match=r"LFM_SEED=.*must be < 2\*\*64"):
        runtime.seed()
    monkeypatch.setenv("LFM_SEED", str(2**64 - 1))
    assert runtime.seed() == 2**64 - 1


def test_seed_everything_refuses_a_seed_beyond_64_bits_naming_seed():
    with pytest.raises(ValueError, match=r"seed must be < 2\*\*64.*got 1180591620717411303424"):
        runtime.seed_everything(2**70)
