"""The generator's head options through the DAG's stages: `generator.flow: riemannian` (spherical
tokenizer, sampler euler) and `generator.magnitude: predict` (gaussian tokenizer) each train (train_ar),
sample (sample) and evaluate (evaluate) on smoke-size outputs, in-process; parse_params refuses the
combinations a head cannot model."""

import copy
import json
import math

import numpy as np
import pytest
from test_sweep import eval_inputs, smoke_data, stage  # noqa: F401  (eval_inputs: a module-scoped fixture)

from sphereard.config import parse_params
from sphereard.errors import UserError
from sphereard.eval.adm import load_samples_npz
from sphereard.export import META_FILE
from sphereard.layout import export_dir, info_file, metrics_file, samples_file

REL_TOL = 1e-5  # riemannian tokens: relative distance to the radius-R sphere


def head_data(data: dict, posterior: str, flow: str = "euclidean", magnitude: str = "none",
              sampler: str | None = None) -> dict:
    """A copy of the smoke params training only `posterior`, with the generator head's options."""
    data = copy.deepcopy(data)
    data["tokenizer"]["posteriors"] = [posterior]
    data["generator"].update(flow=flow, magnitude=magnitude)
    if sampler is not None:
        data["sampling"]["sampler"] = sampler
    return data


def test_parse_params_refuses_heads_that_do_not_fit_the_posterior(tmp_path):
    data = smoke_data(tmp_path)
    with pytest.raises(UserError, match=r"^generator\.flow='riemannian': needs latents on the sphere") as err:
        parse_params(head_data(data, "gaussian", flow="riemannian", sampler="euler"))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^generator\.magnitude='predict': predict needs latents of varying norm"
                       ) as err:
        parse_params(head_data(data, "spherical", magnitude="predict"))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^sampling\.sampler='euler_maruyama': the riemannian head"):
        parse_params(head_data(data, "spherical", flow="riemannian", sampler="euler_maruyama"))
    # the smoke profile trains all three posteriors: one of them (gaussian) rules riemannian out
    with pytest.raises(UserError, match=r"^generator\.flow="):
        parse_params({**data, "generator": {**data["generator"], "flow": "riemannian"},
                      "sampling": {**data["sampling"], "sampler": "euler"}})
    for posterior in ("spherical", "gaussian_norm"):
        assert parse_params(head_data(data, posterior, flow="riemannian", sampler="euler")).generator.flow == \
            "riemannian"
    assert parse_params(head_data(data, "gaussian", magnitude="predict")).generator.magnitude == "predict"


def run_chain(data: dict, posterior: str):
    """train_vae -> encode -> train_ar -> sample -> evaluate of `posterior` in-process -> the run's params."""
    from pipelines import encode, evaluate, sample, train_ar, train_vae

    for module in (train_vae, encode, train_ar, sample, evaluate):
        stage(module, data, posterior=posterior)
    return parse_params(data).for_run(parse_params(data).seeds[0])


def common_checks(params, posterior: str, flow: str, magnitude: str):
    """The export's head options, the sample stage's outputs and evaluate's main FD -> (meta, npz, sampling
    metrics, evaluation metrics)."""
    meta = json.loads((export_dir(params, "generator", posterior) / META_FILE).read_text())
    assert (meta["flow"], meta["magnitude"], meta["posterior"]) == (flow, magnitude, posterior)
    assert meta["step"] == params.generator.train.steps
    n = params.sampling.num_per_class * 10  # fmnist: 10 classes
    images, labels = load_samples_npz(samples_file(params, posterior))
    assert images.shape[0] == n and labels.tolist() == np.repeat(np.arange(10), params.sampling.num_per_class).tolist()
    npz = dict(np.load(samples_file(params, posterior)))
    assert npz["latents"].shape[0] == npz["norms"].shape[0] == n
    assert np.isfinite(npz["latents"]).all() and np.isfinite(npz["norms"]).all()
    info = json.loads(info_file(params, "sampling", posterior).read_text())
    assert info["generator_step"] == meta["step"] and info["settings"]["sampler"] == params.sampling.sampler
    sampling = json.loads(metrics_file(params, "sampling", posterior).read_text())
    evaluation = json.loads(metrics_file(params, "evaluation", posterior).read_text())
    assert math.isfinite(evaluation["fd_classifier"]) and evaluation["fd_classifier"] >= 0
    return meta, npz, sampling, evaluation


@pytest.mark.slow
def test_riemannian_flow_trains_samples_and_evaluates(eval_inputs):  # noqa: F811
    _, data = eval_inputs
    data = head_data(data, "spherical", flow="riemannian", sampler="euler")
    params = run_chain(data, "spherical")
    meta, npz, sampling, evaluation = common_checks(params, "spherical", "riemannian", "none")
    R = float(meta["radius"])
    # `norms` are the tokens' norms after CFG and before the projection: exponential-map steps stay on S_R
    assert np.abs(npz["norms"] / R - 1).max() < REL_TOL
    assert np.abs(np.linalg.norm(npz["latents"], axis=-1) / R - 1).max() < REL_TOL
    assert abs(sampling["norm_mean"] / R - 1) < REL_TOL and sampling["norm_std"] / R < REL_TOL
    # evaluate's diagnostics sample without projection too, at CFG 4.5: still on the sphere
    devs = {k: v for k, v in evaluation.items() if k.startswith("norm_rel_dev_")}
    assert "norm_rel_dev_none_cfg4.5" in devs and max(devs.values()) < REL_TOL, devs


@pytest.mark.slow
def test_magnitude_head_trains_samples_and_evaluates(eval_inputs):  # noqa: F811
    _, data = eval_inputs
    data = head_data(data, "gaussian", magnitude="predict")
    params = run_chain(data, "gaussian")
    _, npz, _, evaluation = common_checks(params, "gaussian", "euclidean", "predict")
    # `norms` are the flow head's directions (on the sqrt(d) sphere up to the flow's error); the tokens
    # (no projection for gaussian) carry the magnitude head's sampled norms instead
    token_norms = np.linalg.norm(npz["latents"], axis=-1)
    assert (token_norms > 0).all() and token_norms.std() > 0
    assert not np.allclose(token_norms, npz["norms"], rtol=1e-3)
    assert math.isfinite(evaluation["tf_radial_error"])
