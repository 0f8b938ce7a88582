"""The one validation-error explainer finds the model holding any key of any of our models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.vetting.profile import Matmul, Profile
from user_envs.edf import Edf
from vocab.explain import did_you_mean, explain, key_path, model_at
from vocab.site import ContainerHook, Gpus, Partition, SiteSpec
from workloads.trainer.config import CheckpointConfig, TrainerConfig


@pytest.mark.parametrize("root,loc,holder", [
    (SiteSpec, ("nodes", 0, "hardware", "gpus", "cnt"), Gpus),
    (SiteSpec, ("platforms", "ml", "vclusters", "a", "partitions", 0, "maxtime"), Partition),
    (SiteSpec, ("platforms", "ml", "vclusters", "a", "container_engine", "hooks", "x", "libs"), ContainerHook),
    (Profile, ("checks", 0, "matmul", "min_tflop"), Matmul),  # a discriminated union names its member
    (Edf, ("imgae",), Edf),
    (TrainerConfig, ("checkpoint", "intervall"), CheckpointConfig),
])
def test_model_at_walks_nested_models_mappings_tuples_and_unions(root, loc, holder):
    assert model_at(root, loc) is holder


def test_unknown_key_gets_the_closest_known_one_or_the_allowed_ones():
    try:
        SiteSpec.model_validate({"site": "s", "nodes": [], "platfroms": {}})
    except ValidationError as e:
        lines = [explain(SiteSpec, err, "see sites/local.yaml") for err in e.errors()]
    assert lines == ["platfroms: unknown key 'platfroms'; did you mean 'platforms'?"]
    assert did_you_mean("zzz", ["a", "b"]) == "allowed keys here: a, b"
    assert key_path(("nodes", 0, "hardware")) == "nodes[0].hardware" and key_path(()) == "(top level)"
