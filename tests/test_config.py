import pytest

from esd_lora.config import EraseConfig
from esd_lora.errors import ConfigError, EmptyConceptError, UnknownMethodError


def test_defaults_and_normalisation():
    cfg = EraseConfig(concepts="  van   gogh ")
    assert cfg.concepts == ["van gogh"]
    assert (cfg.method, cfg.eta, cfg.start_guidance, cfg.ddim_steps) == ("esd-x", 1.0, 3.0, 50)
    assert cfg.alpha == float(cfg.rank) == 4.0
    assert (cfg.gradient_checkpointing, cfg.compile) == (False, False)  # speed options are opt-in


@pytest.mark.parametrize("kwargs, error, match", [
    ({"concepts": []}, EmptyConceptError, "no concept"),
    ({"concepts": ["  "]}, EmptyConceptError, "empty concept"),
    ({"concepts": ["ok", ""]}, EmptyConceptError, "empty concept"),
    ({"concepts": ["x"], "erase_from": " "}, EmptyConceptError, "erase_from"),
    ({"concepts": ["x"], "method": "esd-z"}, UnknownMethodError, "esd-x, esd-x-strict, esd-u, esd-all"),
    ({"concepts": ["x"], "iterations": 0}, ConfigError, "iterations"),
    ({"concepts": ["x"], "rank": 2.5}, ConfigError, "rank"),
    ({"concepts": ["x"], "ddim_steps": True}, ConfigError, "ddim_steps"),
    ({"concepts": ["x"], "eta": float("nan")}, ConfigError, "eta"),
    ({"concepts": ["x"], "lr": "fast"}, ConfigError, "lr"),
    ({"concepts": ["x"], "lr": -1.0}, ConfigError, "lr"),
    ({"concepts": ["x"], "sample_with": "teacher"}, ConfigError, "sample_with"),
    ({"concepts": ["x"], "preserve_at": "elsewhere"}, ConfigError, "preserve_at must be one of erased, own"),
    ({"concepts": ["x"], "preserve_at": "own"}, ConfigError, "needs preserve prompts to keep: add some"),
    ({"concepts": ["x"], "lr_schedule": "step"}, ConfigError, "lr_schedule must be one of constant, linear, cosine"),
    ({"concepts": ["x"], "dtype": "fp8"}, ConfigError, "dtype"),
    ({"concepts": ["x"], "preserve": ["ok", " "]}, EmptyConceptError, "preserve"),
    ({"concepts": ["x"], "preserve_weight": -1.0}, ConfigError, "preserve_weight"),
    ({"concepts": ["x"], "preserve_text_weight": -0.5}, ConfigError, "preserve_text_weight must be 0 or more"),
    ({"concepts": ["x"], "preserve_text_weight": float("nan")}, ConfigError, "preserve_text_weight must be a finite"),
    ({"concepts": ["x"], "method": "esd-u", "preserve_text_weight": 1.0}, ConfigError, "which esd-u does not train"),
    ({"concepts": ["x"], "refresh_batch": -1}, ConfigError, "refresh_batch must be 0 .automatic. or a positive"),
    ({"concepts": ["x"], "bank_size": -1}, ConfigError, "bank_size must be 0"),
    ({"concepts": ["x"], "bank_size": True}, ConfigError, "bank_size"),
    ({"concepts": ["x"], "refresh_every": 0}, ConfigError, "refresh_every"),
    ({"concepts": ["x"], "gradient_checkpointing": "yes"}, ConfigError, "gradient_checkpointing must be true or"),
    ({"concepts": ["x"], "compile": 1}, ConfigError, "compile must be true or false"),
    ({"concepts": ["x"], "contexts": ["a car"]}, ConfigError, "must hold {} once, where the concept goes"),
    ({"concepts": ["x"], "concept_contexts": ["a {} car"]}, ConfigError, "must map erased concepts to lists"),
    ({"concepts": ["x"], "concept_contexts": {"y": ["a {} car"]}}, ConfigError, "names 'y', which is not erased"),
    ({"concepts": ["x"], "concept_contexts": {"x": ["a car"]}}, ConfigError, "must hold {} once"),
    ({"concepts": ["x"], "concept_contexts": {"x": 3}}, ConfigError, "contexts must be a list of prompts"),
    ({"concepts": ["x"], "concept_contexts": {"x": ["a {} car"]}, "adversarial_every": 2}, ConfigError,
     "contexts and adversarial erasure cannot be combined"),
    ({"concepts": ["x"], "contexts": ["{} and {}"]}, ConfigError, "must hold {} once"),
    ({"concepts": ["x"], "contexts": [" {} "]}, ConfigError, "no words around the concept"),
    ({"concepts": ["x"], "contexts": [" "]}, EmptyConceptError, "empty context"),
    ({"concepts": ["x"], "contexts": ["a {}"], "adversarial_every": 5}, ConfigError, "cannot be combined"),
])
def test_bad_values_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        EraseConfig(**kwargs)


def test_contexts_add_each_concept_inside_each_context_erased_toward_the_context_alone():
    cfg = EraseConfig(concepts=["red", "blue"], contexts=["a  {} star", "{}, striped"], erase_from="a shape")
    assert cfg.contexts == ["a {} star", "{}, striped"]
    assert cfg.targets() == [("red", "a shape"), ("blue", "a shape"), ("a red star", "a star"),
                             ("a blue star", "a star"), ("red, striped", ", striped"),
                             ("blue, striped", ", striped")]
    assert EraseConfig(concepts="red").targets() == [("red", None)]


def test_concept_contexts_put_only_their_own_concept_in_the_slot():
    cfg = EraseConfig(concepts=["red", " star "], contexts=["a {}"],
                      concept_contexts={"red": ["striped {}  star"], "star": "solid red {}"})
    assert cfg.concept_contexts == {"red": ["striped {} star"], "star": ["solid red {}"]}
    assert cfg.targets() == [("red", None), ("star", None), ("a red", "a"), ("a star", "a"),
                             ("striped red star", "striped star"), ("solid red star", "solid red")]
    assert EraseConfig.from_dict(cfg.to_dict()) == cfg
    older = {k: v for k, v in cfg.to_dict().items() if k != "concept_contexts"}  # metadata of an earlier version
    assert EraseConfig.from_dict(older).concept_contexts == {}


def test_round_trip_and_unknown_keys_warn():
    cfg = EraseConfig(concepts=["a", "b"], method="esd-u", eta=2.0, alpha=1.0)
    assert EraseConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.warns(UserWarning, match="future_option"):
        again = EraseConfig.from_dict({**cfg.to_dict(), "future_option": 3})
    assert again == cfg


def test_every_option_has_help():
    for name in EraseConfig.__dataclass_fields__:
        assert EraseConfig.help(name)
