"""DeepSpeed data-efficiency config: seed-system files parse unchanged, validation is strict."""

import dataclasses
import json

import pytest

from megatron.core import deepspeed_config
from megatron.core.curriculum import config as curriculum_config
from megatron.core.deepspeed_config import DataEfficiencyConfig, load_deepspeed_config
from megatron.core.json_config import ConfigError
from megatron.core.random_ltd import config as random_ltd_config
from megatron.training.options import field_docs

# The GPT template of Megatron-DeepSpeed's data_efficiency examples (two metrics), with the
# launcher's placeholders; `fill` substitutes them in order, as its sed pipeline does.
GPT_TEMPLATE = """{
  "train_batch_size": GBSIZE,
  "train_micro_batch_size_per_gpu": MBSIZE,
  "steps_per_print": LOG_INTERVAL,
  "zero_optimization": {"stage": ZERO_STAGE, "elastic_checkpoint": true},
  "gradient_clipping": 1.0,
  "prescale_gradients": PRESCALE_GRAD,
  "fp16": {"enabled": true, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2,
           "min_loss_scale": 1, "initial_scale_power": 11},
  "wall_clock_breakdown" : false,
  "dataloader_drop_last": true,
  "data_efficiency": {
    "enabled": true,
    "seed": DATA_EFFICIENCY_SEED,
    "data_routing": {
      "enabled": LTD_ENABLED,
      "random_ltd":{
        "enabled": LTD_ENABLED,
        "total_layer_num": 24,
        "random_ltd_layer_num": 22,
        "random_ltd_layer_id": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22],
        "model_mask_name": "attention_mask",
        "model_type": "MODEL_TYPE",
        "hidden_state_order": "seq_batch_dim",
        "random_ltd_schedule": {
          "min_value": LTD_MIN,
          "max_value": LTD_MAX,
          "schedule_type":"fixed_linear",
          "schedule_config": {"require_steps": LTD_STEP, "seq_per_step": 16}
        }
      }
    },
    "data_sampling": {
      "enabled": CL_ENABLED,
      "num_workers": DATA_SAMPLING_NUM_WORKERS,
      "curriculum_learning": {
        "enabled": CL_ENABLED,
        "data_cluster_path": "CL_CLUSTER_PATH",
        "curriculum_metrics": {
          "CL_1st_METRIC_NAME": {
            "index_to_sample_path": "CL_1st_SAMPLE_PATH",
            "index_to_metric_path": "CL_1st_METRIC_PATH",
            "difficulty_type": "CL_1st_DIFF_TYPE",
            "clustering_type": "CL_1st_CLUSTER_TYPE",
            "min_difficulty": CL_1st_MIN,
            "max_difficulty": CL_1st_MAX,
            "schedule_type": "fixed_root",
            "schedule_config": {
              "total_curriculum_step": CL_1st_TOTAL_STEP,
              "difficulty_step": CL_1st_DIFF_STEP,
              "root_degree": CL_1st_ROOT
            }
          },
          "CL_2nd_METRIC_NAME": {
            "index_to_sample_path": "CL_2nd_SAMPLE_PATH",
            "index_to_metric_path": "CL_2nd_METRIC_PATH",
            "difficulty_type": "CL_2nd_DIFF_TYPE",
            "clustering_type": "CL_2nd_CLUSTER_TYPE",
            "min_difficulty": CL_2nd_MIN,
            "max_difficulty": CL_2nd_MAX,
            "schedule_type": "fixed_root",
            "schedule_config": {
              "total_curriculum_step": CL_2nd_TOTAL_STEP,
              "difficulty_step": CL_2nd_DIFF_STEP,
              "root_degree": CL_2nd_ROOT
            }
          }
        }
      }
    }
  }
}"""

# GPT-3 1.3B, "CL vocab rarity + seqlen truncation" with random-LTD (the composed run of the
# DeepSpeed Data Efficiency paper).
GPT_VALUES = {
    "GBSIZE": "512",
    "MBSIZE": "4",
    "LOG_INTERVAL": "100",
    "ZERO_STAGE": "0",
    "PRESCALE_GRAD": "true",
    "DATA_EFFICIENCY_SEED": "1234",
    "LTD_ENABLED": "true",
    "LTD_MIN": "128",
    "LTD_MAX": "2048",
    "LTD_STEP": "200000",
    "MODEL_TYPE": "decoder",
    "CL_ENABLED": "true",
    "DATA_SAMPLING_NUM_WORKERS": "0",
    "CL_CLUSTER_PATH": "/tmp/cl_cluster",
    "CL_1st_METRIC_NAME": "voc",
    "CL_1st_SAMPLE_PATH": "/data/vocab_rarity/vocab_rarity_index_to_sample_percentile_merged",
    "CL_1st_METRIC_PATH": "/data/vocab_rarity/vocab_rarity_index_to_metric",
    "CL_1st_DIFF_TYPE": "percentile",
    "CL_1st_CLUSTER_TYPE": "schedule_based",
    "CL_1st_MIN": "1",
    "CL_1st_MAX": "100",
    "CL_1st_TOTAL_STEP": "110000",
    "CL_1st_DIFF_STEP": "1",
    "CL_1st_ROOT": "2",
    "CL_2nd_METRIC_NAME": "seqlen_truncate",
    "CL_2nd_SAMPLE_PATH": "dummy",
    "CL_2nd_METRIC_PATH": "dummy",
    "CL_2nd_DIFF_TYPE": "value",
    "CL_2nd_CLUSTER_TYPE": "single_cluster",
    "CL_2nd_MIN": "80",
    "CL_2nd_MAX": "2048",
    "CL_2nd_TOTAL_STEP": "110000",
    "CL_2nd_DIFF_STEP": "8",
    "CL_2nd_ROOT": "1",
}

# BERT-large "CL vocab rarity + seqlen truncation" + random-LTD (encoder), value difficulty.
BERT_VALUES = dict(
    GPT_VALUES,
    GBSIZE="1024",
    LTD_MIN="200",
    LTD_MAX="512",
    LTD_STEP="1800000",
    MODEL_TYPE="encoder",
    CL_1st_SAMPLE_PATH="/data/vocab_rarity/vocab_rarity_index_to_sample",
    CL_1st_DIFF_TYPE="value",
    CL_1st_MIN="600",
    CL_1st_MAX="9069",
    CL_1st_TOTAL_STEP="960000",
    CL_2nd_MIN="128",
    CL_2nd_MAX="512",
    CL_2nd_TOTAL_STEP="960000",
)


def fill(template: str, values: dict) -> dict:
    for key, value in values.items():  # longest first, so LTD_MIN does not eat LTD_MINX
        template = template.replace(key, value)
    return json.loads(template)


def gpt_dict() -> dict:
    return fill(GPT_TEMPLATE, dict(sorted(GPT_VALUES.items(), key=lambda kv: -len(kv[0]))))


def test_gpt_seed_config_parses_unchanged(tmp_path):
    path = tmp_path / "ds_config_gpt.json"
    path.write_text(json.dumps(gpt_dict()))
    cfg = load_deepspeed_config(path)
    de = cfg.data_efficiency
    assert de.enabled and de.seed == 1234 and de.curriculum_learning.enabled
    voc = de.curriculum_learning.curriculum_metrics["voc"]
    assert (voc.name, voc.difficulty_type, voc.schedule_type) == ("voc", "percentile", "fixed_root")
    assert voc.schedule_config.total_curriculum_step == 110000 and voc.filters_samples
    trunc = de.curriculum_learning.seqlen_metric
    assert trunc.name == "seqlen_truncate" and not trunc.filters_samples
    ltd = de.random_ltd
    assert ltd.enabled and ltd.random_ltd_layer_id == list(range(1, 23))
    assert ltd.random_ltd_schedule.schedule_config.require_steps == 200000
    assert set(cfg.ignored) >= {"train_batch_size", "fp16", "zero_optimization"}
    assert cfg.ignored["train_batch_size"] == 512


def test_bert_seed_config_parses_unchanged():
    values = dict(sorted(BERT_VALUES.items(), key=lambda kv: -len(kv[0])))
    cfg = load_deepspeed_config(fill(GPT_TEMPLATE, values))
    voc = cfg.data_efficiency.curriculum_learning.curriculum_metrics["voc"]
    assert (voc.difficulty_type, voc.min_difficulty, voc.max_difficulty) == ("value", 600, 9069)
    assert cfg.data_efficiency.random_ltd.model_type == "encoder"
    assert cfg.data_efficiency.random_ltd.random_ltd_schedule.min_value == 200


def test_baseline_launch_with_everything_disabled():
    values = dict(GPT_VALUES, LTD_ENABLED="false", CL_ENABLED="false", LTD_MIN="2048", LTD_STEP="1")
    values.update(CL_1st_METRIC_NAME="dummy", CL_2nd_METRIC_NAME="dummy2")
    cfg = load_deepspeed_config(
        fill(GPT_TEMPLATE, dict(sorted(values.items(), key=lambda kv: -len(kv[0]))))
    )
    assert not cfg.data_efficiency.curriculum_learning.enabled
    assert not cfg.data_efficiency.random_ltd.enabled


def test_plain_dict_round_trip():
    cfg = load_deepspeed_config(gpt_dict())
    plain = cfg.to_plain_dict()
    json.dumps(plain)  # checkpoint-safe
    again = load_deepspeed_config(plain)
    assert again.to_plain_dict() == plain
    assert again.data_efficiency == cfg.data_efficiency


def test_legacy_block():
    legacy = {
        "train_batch_size": 8,
        "curriculum_learning": {
            "enabled": True,
            "curriculum_type": "seqlen",
            "min_difficulty": 8,
            "max_difficulty": 1024,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": 40000, "difficulty_step": 8},
        },
    }
    cfg = load_deepspeed_config(legacy)
    assert cfg.curriculum_learning.enabled and cfg.curriculum_learning.max_difficulty == 1024
    old = json.loads(json.dumps(legacy))
    old["curriculum_learning"]["schedule_config"] = {"total_step": 40000, "difficulty_step": 8}
    assert (
        load_deepspeed_config(old).curriculum_learning.schedule_config.total_curriculum_step
        == 40000
    )
    both = dict(gpt_dict(), curriculum_learning=legacy["curriculum_learning"])
    with pytest.raises(ConfigError, match="use one"):
        load_deepspeed_config(both)
    disabled = {"curriculum_learning": {"enabled": False}}
    assert not load_deepspeed_config(disabled).curriculum_learning.enabled


def test_sequence_length_schedules_start_at_one_token_or_more():
    """A seqlen min <= 0 used to pass the reader and fail at step 1."""
    d = gpt_dict()
    metrics = d["data_efficiency"]["data_sampling"]["curriculum_learning"]["curriculum_metrics"]
    metrics["seqlen_truncate"]["min_difficulty"] = 0
    with pytest.raises(ConfigError, match="seqlen_truncate: min_difficulty 0 is a sequence length"):
        load_deepspeed_config(d)
    legacy = {
        "curriculum_learning": {
            "enabled": True,
            "min_difficulty": -8,
            "max_difficulty": 1024,
            "schedule_config": {"total_curriculum_step": 100, "difficulty_step": 8},
        }
    }
    with pytest.raises(ConfigError, match="legacy curriculum_learning block: min_difficulty -8"):
        load_deepspeed_config(legacy)


def test_a_maximum_off_the_difficulty_step_is_reported(caplog):
    d = gpt_dict()
    metric_path(d)["max_difficulty"] = 99
    metric_path(d)["schedule_config"]["difficulty_step"] = 10
    with caplog.at_level("WARNING"):
        load_deepspeed_config(d)
    assert "max_difficulty 99 is not a multiple of difficulty_step 10" in caplog.text
    assert "stops at 90" in caplog.text


def test_random_ltd_needs_layers():
    """An empty layer list used to turn random-LTD off silently."""
    d = gpt_dict()
    ltd = d["data_efficiency"]["data_routing"]["random_ltd"]
    ltd.update(random_ltd_layer_id=[], random_ltd_layer_num=0)
    with pytest.raises(ConfigError, match="random_ltd_layer_id is empty") as err:
        load_deepspeed_config(d)
    assert "data_efficiency.data_routing.random_ltd" in str(err.value)


def test_checks_against_the_model():
    """What needs --seq-length / --num-layers (run by parse_args, before anything is built)."""
    from megatron.training.data_efficiency import check_against_model

    cfg = load_deepspeed_config(gpt_dict())
    assert check_against_model(cfg, 2048, 24, False) == tuple(range(1, 23))
    with pytest.raises(ValueError, match="max_difficulty 2048 is above --seq-length 1024"):
        check_against_model(cfg, 1024, 24, False)
    with pytest.raises(ValueError, match="min_value 128 is not below --seq-length 128"):
        check_against_model(load_deepspeed_config(_no_curriculum(gpt_dict())), 128, 24, False)
    with pytest.raises(ValueError, match="does not support --sequence-parallel"):
        check_against_model(cfg, 2048, 24, True)
    legacy = {
        "curriculum_learning": {
            "enabled": True,
            "min_difficulty": 8,
            "max_difficulty": 1024,
            "schedule_config": {"total_curriculum_step": 100, "difficulty_step": 8},
        }
    }
    match = (
        "legacy curriculum_learning block: max_difficulty 1024 is above --seq-length 512: lengths "
        "are capped at 512 \\(full length from step 50 instead of step 100\\)"
    )
    with pytest.raises(ValueError, match=match):
        check_against_model(load_deepspeed_config(legacy), 512, 24, False)


def _no_curriculum(d):
    d["data_efficiency"]["data_sampling"]["enabled"] = False
    return d


def metric_path(d):
    return d["data_efficiency"]["data_sampling"]["curriculum_learning"]["curriculum_metrics"]["voc"]


def test_unknown_key_names_path_and_suggestion():
    d = gpt_dict()
    metric_path(d)["schedule_config"]["root_degre"] = 2
    with pytest.raises(ConfigError) as err:
        load_deepspeed_config(d)
    message = str(err.value)
    assert "curriculum_metrics.voc.schedule_config" in message
    assert "'root_degre'" in message and "did you mean 'root_degree'" in message
    d = gpt_dict()
    d["data_efficency"] = d.pop("data_efficiency")
    with pytest.raises(ConfigError, match="did you mean 'data_efficiency'"):
        load_deepspeed_config(d)
    d = gpt_dict()
    d["data_efficiency"]["data_routing"]["random_ltd"]["random_ltd_layer_ids"] = [1]
    with pytest.raises(
        ConfigError, match="data_routing.random_ltd: unknown key .*'random_ltd_layer_id'"
    ):
        load_deepspeed_config(d)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("min_difficulty", "1", r"voc.min_difficulty: expected an integer, got str '1'"),
        ("min_difficulty", True, "expected an integer, got bool"),
        ("min_difficulty", 1.5, "expected an integer, got float"),
        ("difficulty_type", 3, "voc.difficulty_type: expected a string"),
        ("schedule_config", [1], "voc.schedule_config: expected an object"),
        ("difficulty_type", "percentil", "did you mean 'percentile'"),
    ],
)
def test_wrong_types_name_the_path(key, value, match):
    d = gpt_dict()
    metric_path(d)[key] = value
    with pytest.raises(ConfigError, match=match):
        load_deepspeed_config(d)


def test_integral_floats_are_accepted():
    d = gpt_dict()
    metric_path(d)["schedule_config"]["total_curriculum_step"] = 1.1e5
    cfg = load_deepspeed_config(d)
    assert (
        cfg.data_efficiency.curriculum_learning.curriculum_metrics[
            "voc"
        ].schedule_config.total_curriculum_step
        == 110000
    )


def test_parent_flags_disable_children():
    d = gpt_dict()
    d["data_efficiency"]["enabled"] = False
    de = load_deepspeed_config(d).data_efficiency
    assert not de.curriculum_learning.enabled and not de.random_ltd.enabled
    d = gpt_dict()
    d["data_efficiency"]["data_sampling"]["enabled"] = False
    de = load_deepspeed_config(d).data_efficiency
    assert not de.curriculum_learning.enabled and de.random_ltd.enabled
    d = gpt_dict()
    d["data_efficiency"]["data_routing"]["enabled"] = False
    de = load_deepspeed_config(d).data_efficiency
    assert de.curriculum_learning.enabled and not de.random_ltd.enabled
    assert not load_deepspeed_config({}).data_efficiency.enabled


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m["schedule_config"].pop("root_degree"), "root_degree is required"),
        (lambda m: m.update(max_difficulty=120), r"percentile difficulties must lie in \[0, 100\]"),
        (
            lambda m: m.update(min_difficulty=50, max_difficulty=10, difficulty_type="value"),
            "above max",
        ),
        (lambda m: m.pop("min_difficulty"), "min_difficulty and max_difficulty are required"),
        (
            lambda m: m.update(
                schedule_type="fixed_discrete",
                schedule_config={"difficulty": [1, 2], "max_step": [5, 9]},
            ),
            "one more entry",
        ),
        (lambda m: m["schedule_config"].update(difficulty_step=0), "difficulty_step must be >= 1"),
        (lambda m: m.update(schedule_type="fixed_squareroot"), "did you mean 'fixed_root'"),
        (
            lambda m: m["schedule_config"].update(custom_function="no_colon"),
            "package.module:function",
        ),
        (
            lambda m: m["schedule_config"].update(difficulty_step=128),
            r"difficulty_step 128 has no multiple in \(min_difficulty 1, max_difficulty 100\]: "
            "the difficulty would stay at 1 for the whole run",
        ),
    ],
)
def test_schedule_validation(edit, match):
    d = gpt_dict()
    edit(metric_path(d))
    with pytest.raises(ConfigError, match=match) as err:
        load_deepspeed_config(d)
    assert "curriculum_metrics.voc" in str(err.value)


def test_curriculum_and_ltd_validation():
    d = gpt_dict()
    cl = d["data_efficiency"]["data_sampling"]["curriculum_learning"]
    cl["curriculum_metrics"]["seqlen_reshape"] = dict(cl["curriculum_metrics"]["seqlen_truncate"])
    with pytest.raises(ConfigError, match="only one of"):
        load_deepspeed_config(d)
    cl["curriculum_metrics"] = {}
    with pytest.raises(ConfigError, match="curriculum_metrics is empty"):
        load_deepspeed_config(d)
    d = gpt_dict()
    d["data_efficiency"]["data_routing"]["random_ltd"]["random_ltd_layer_num"] = 21
    with pytest.raises(ConfigError, match="random_ltd_layer_num 21 != 22"):
        load_deepspeed_config(d)
    d = gpt_dict()
    d["data_efficiency"]["data_routing"]["random_ltd"]["random_ltd_layer_id"] = [1, 30]
    d["data_efficiency"]["data_routing"]["random_ltd"]["random_ltd_layer_num"] = 2
    with pytest.raises(ConfigError, match="distinct ascending layer ids"):
        load_deepspeed_config(d)
    d = gpt_dict()
    del d["data_efficiency"]["data_routing"]["random_ltd"]["random_ltd_schedule"]
    with pytest.raises(ConfigError, match="random_ltd_schedule"):
        load_deepspeed_config(d)
    d = gpt_dict()
    d["data_efficiency"]["data_routing"]["random_ltd"]["layer_token_lr_schedule"] = {
        "enabled": True
    }
    with pytest.raises(ConfigError, match="total_layer_tokens"):
        load_deepspeed_config(d)


def test_unsubstituted_template_is_reported(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(GPT_TEMPLATE)
    with pytest.raises(ConfigError, match="placeholders"):
        load_deepspeed_config(path)


def test_input_dict_is_not_modified():
    d = gpt_dict()
    before = json.dumps(d, sort_keys=True)
    load_deepspeed_config(d)
    assert json.dumps(d, sort_keys=True) == before


def test_every_field_has_a_docstring():
    classes = [
        obj
        for module in (curriculum_config, random_ltd_config, deepspeed_config)
        for obj in vars(module).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == module.__name__
    ]
    assert DataEfficiencyConfig in classes and len(classes) >= 12
    for cls in classes:
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
