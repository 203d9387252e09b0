"""Group masks: feature groups from the config, training masks that hide a whole group, and group scoring passes."""

from __future__ import annotations

import pytest
import torch

from scada_tcn.runtime.errors import ConfigError
from scada_tcn.trainer.config import load_config
from scada_tcn.trainer.config.derive import spec_from_config
from scada_tcn.trainer.config.groups import feature_groups
from scada_tcn.trainer.model.masking import sample_group_mask, sample_mask
from scada_tcn.trainer.model.network import ModelConfig, MultiTaskTCN
from scada_tcn.trainer.model.scoring import ScoringModule, group_patterns
from scada_tcn.trainer.training.step import TrainStepConfig, train_step
from tests.conftest import CONFIG

L, F, R = 24, 6, 2
GROUP_OF = (0, 0, 1, 2, 2, 3)  # 4 groups over 6 features
LHB = ["data=la_haute_borne"]


def _window(B: int, seed: int = 0, p_missing: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, L, F, generator=g)
    M_miss = (torch.rand(B, L, F, generator=g) >= p_missing).float()
    return X * M_miss, M_miss, (torch.rand(B, L, R, generator=g) > 0.5).float()


def _model() -> MultiTaskTCN:
    torch.manual_seed(0)
    return MultiTaskTCN(ModelConfig(F=F, R=R, K=3, C=2, D=16, num_blocks=3, dropout=0.0)).eval()


def test_feature_bases_follow_the_feature_order():
    cfg = load_config(CONFIG, LHB)
    spec = spec_from_config(cfg)
    bases = dict(zip(spec.feature_names, spec.feature_bases(), strict=True))
    assert bases["wind_dir_sin"] == bases["wind_dir_cos"] == "wind_dir"
    assert bases["power_rstd36"] == bases["power"] == "power"
    assert bases["gearbox_oil_above_ambient_delta"] == "gearbox_oil_above_ambient"
    assert bases["yaw_error_rmean6"] == "yaw_error"


def test_configured_groups_join_bases_and_every_other_base_stands_alone():
    cfg = load_config(CONFIG, LHB)
    names = list(spec_from_config(cfg).feature_names)
    members = feature_groups(cfg).members(names)
    assert members["gearbox"] == [
        "gearbox_oil_above_ambient",
        "gearbox_bearing_above_ambient",
        "gearbox_oil_above_ambient_delta",
        "gearbox_bearing_above_ambient_delta",
    ]
    assert members["drivetrain_speed"] == ["rotor_speed", "gen_speed"]
    assert members["pitch"] == ["pitch"]
    context = [names[i] for i in feature_groups(cfg).context]
    assert context == ["wind_dir_sin", "wind_dir_cos"]  # weather: an input of every pass, never scored
    assert sorted([f for m in members.values() for f in m] + context) == sorted(names)  # a partition


@pytest.mark.parametrize(
    "groups, message",
    [
        ("{g: [no_such_column]}", "features.mask_groups.g: ['no_such_column'] are not base columns"),
        ("{a: [power], b: [power, pitch]}", "features.mask_groups: 'power' is in both 'a' and 'b'"),
        ("{g: []}", "features.mask_groups.g is empty"),
        ("{power: [pitch]}", "features.mask_groups.power: the name is a base column outside the group"),
    ],
)
def test_bad_groups_are_refused_with_the_key(groups, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(CONFIG, [*LHB, f"features.mask_groups={groups}", "train.group_mask_prob=0.5"])


def test_group_scoring_needs_a_model_trained_with_group_masks():
    window = [*LHB, "infer.score=window_mean", "train.group_mask_prob=0.0"]
    with pytest.raises(ConfigError, match="infer.score_masks=group needs a model trained with train.group_mask_prob"):
        load_config(CONFIG, [*window, "infer.score_masks=group"])
    with pytest.raises(ConfigError, match="needs a model trained with train.group_mask_prob > 0"):
        load_config(CONFIG, [*LHB, "train.group_mask_prob=0.0"])  # the per-signal default
    load_config(CONFIG, [*LHB, "infer.score_masks=group", "train.group_mask_prob=0.5"])


def test_group_mask_hides_one_whole_group_of_present_elements():
    X, M_miss, _ = _window(64, seed=1)
    gen = torch.Generator().manual_seed(2)
    base = sample_mask(M_miss, 0.15, gen)
    M = sample_group_mask(M_miss, base, torch.tensor(GROUP_OF), 0.5, gen)
    group_of = torch.tensor(GROUP_OF)
    n_group = 0
    for b in range(64):
        if torch.equal(M[b], base[b]):
            continue
        hidden = M[b] < 0.5
        cols = hidden.any(0).nonzero().flatten()
        assert len(set(group_of[cols].tolist())) == 1, "one group per window"
        g = int(group_of[cols[0]])
        in_group = (group_of == g).reshape(1, F).expand(L, F)
        assert torch.equal(hidden, in_group & (M_miss[b] > 0.5)), "every present element of the group, nothing else"
        n_group += 1
    assert 20 <= n_group <= 44  # about half of 64
    assert torch.equal(sample_group_mask(M_miss, base, group_of, 0.0, gen), base)
    with pytest.raises(ValueError, match=r"group_of must be \(6,\)"):
        sample_group_mask(M_miss, base, torch.tensor([0, 1]), 0.5, gen)


def test_train_step_with_group_masks_learns_and_counts_the_hidden_group():
    model = MultiTaskTCN(ModelConfig(F=F, R=R, K=3, C=2, D=16, num_blocks=3, dropout=0.0))
    X, M_miss, Flags = _window(16, seed=3, p_missing=0.0)
    batch = {
        "X": X,
        "M_miss": M_miss,
        "Flags": Flags,
        "Y_true": X[:, -3:],
        "M_future": M_miss[:, -3:],
        "y": torch.zeros(16, dtype=torch.int64),
        "has_label": torch.ones(16),
    }
    cfg = TrainStepConfig(p_mask=0.1, p_group=1.0, group_of=GROUP_OF)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logs = train_step(model, batch, cfg, opt, torch.Generator().manual_seed(0))
    # every window hides one whole group: at least L steps x the smallest group (1 feature) per window
    assert logs["n_masked"] >= 16 * L and logs["mask_rate"] > 0.15
    with pytest.raises(ValueError, match="p_group > 0 needs group_of"):
        TrainStepConfig(p_group=0.5)


def test_group_patterns_cover_every_element_once_one_pass_per_group():
    pat = group_patterns(L, GROUP_OF)
    assert pat.shape == (4, L, F)
    assert torch.equal(pat.sum(0), torch.ones(L, F))
    assert torch.equal(pat[0, 5], torch.tensor([1.0, 1, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="every group index"):
        group_patterns(L, (0, 2, 2, 2, 2, 2))
    scoring = ScoringModule(_model(), L, F, p_score=None, seed=0, topn=2, group_of=GROUP_OF)
    assert scoring.P == 4 and scoring.masks == "group"
    with pytest.raises(ValueError, match="give p_score .* or group_of"):
        ScoringModule(_model(), L, F, p_score=0.25, seed=0, topn=2, group_of=GROUP_OF)


def test_a_group_is_scored_without_any_of_its_own_values():
    """The point of group masks: a drift in a group's own history cannot be copied into its reconstruction."""
    scoring = ScoringModule(_model(), L, F, p_score=None, seed=0, topn=2, group_of=GROUP_OF).eval()
    X, M_miss, Flags = _window(3, seed=5)
    drifted = X.clone()
    drifted[:, :, 3:5] += torch.linspace(0, 5, L).reshape(1, L, 1) * M_miss[:, :, 3:5]  # group 2 drifts up
    seen = []
    h = scoring.model.register_forward_hook(lambda m, args, out: seen.append((args[0].clone(), out.X_hat.clone())))
    with torch.no_grad():
        a, b = scoring(X, M_miss, Flags), scoring(drifted, M_miss, Flags)
    h.remove()
    (in_a, hat_a), (in_b, hat_b) = (
        (x.reshape(3, scoring.P, L, -1)[:, 2], y.reshape(3, scoring.P, L, F)[:, 2]) for x, y in seen
    )
    assert torch.equal(in_a, in_b), "the pass that scores group 2 never sees group 2's values"
    assert torch.equal(hat_a, hat_b)
    # so group 2's error grows by the drift itself: nothing of it is explained away
    torch.testing.assert_close(b.E[:, :, 3:5], (hat_a[:, :, 3:5] - drifted[:, :, 3:5]).abs() * M_miss[:, :, 3:5])
    assert float(b.E[:, -4:, 3:5].sum()) > float(a.E[:, -4:, 3:5].sum()) + 10.0


@pytest.fixture(scope="module")
def group_bundle(tiny_run, tmp_path_factory):
    """The tiny farm trained with group masks and exported with group scoring passes."""
    from scada_tcn.export.bundle_writer import export_bundle
    from scada_tcn.trainer.training.fit import fit

    out = tmp_path_factory.mktemp("group_run")
    cfg = tiny_run.cfg(f"output_dir={out / 'run'}", "train.group_mask_prob=0.5", "infer.score_masks=group")
    best = fit(cfg, log=lambda m: None)
    return export_bundle(best, out_dir=out / "bundle", log=lambda m: None), cfg


def test_group_scoring_exports_with_parity_and_records_its_groups(group_bundle):
    from scada_tcn.runtime.bundle import load_bundle

    bundle, cfg = group_bundle
    again = load_bundle(bundle.path)
    names = list(spec_from_config(cfg).feature_names)
    assert again.parity.passed
    assert again.scoring.masks == "group" and again.scoring.p_score is None
    assert again.scoring.passes == len(again.scoring.groups) == len(feature_groups(cfg).names)
    assert {g: list(m) for g, m in again.scoring.groups.items()} == feature_groups(cfg).members(names)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s["groups"]["power"].pop(), "scoring.groups must be non-empty groups that, with scoring.context"),
        (lambda s: s.update(context=["no_such_feature"]), "scoring.context must list distinct features"),
        (lambda s: s.update(p_score=0.25), "masks 'group' takes groups and p_score null"),
        (lambda s: s.update(passes=3), "but there are"),
        (lambda s: s.update(masks="rows"), "scoring.masks: unknown 'rows'"),
    ],
)
def test_bundle_refuses_inconsistent_group_scoring(group_bundle, tmp_path, edit, message):
    import json
    import shutil

    from scada_tcn.runtime.bundle import load_bundle
    from scada_tcn.runtime.errors import BundleError

    bundle, _ = group_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    doc = json.loads((copy / "bundle.json").read_text())
    edit(doc["scoring"])
    (copy / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_context_features_are_inputs_never_hidden_never_scored():
    X, M_miss, Flags = _window(4, seed=6)
    group_of = (0, 0, -1, 1, 1, 2)  # feature 2 is context
    for kw in ({"p_score": None, "group_of": group_of}, {"p_score": 0.25, "group_of": None}):
        scoring = ScoringModule(_model(), L, F, seed=0, topn=2, context=(2,), **kw).eval()
        assert (scoring.hide[:, :, 2] == 0).all()
        seen: list[torch.Tensor] = []
        h = scoring.model.register_forward_hook(lambda m, args, out, seen=seen: seen.append(args[0].clone()))
        with torch.no_grad():
            out = scoring(X, M_miss, Flags)
            moved = X.clone()
            moved[:, :, 2] += 3.0  # a context value is an input: it moves the other features' errors
            out_moved = scoring(moved, M_miss, Flags)
        h.remove()
        M_score = seen[0][..., 2 * F : 3 * F]
        assert (M_score[..., 2] == 1).all(), "a context feature is never hidden"
        assert (out.E[..., 2] == 0).all() and (out.feat_contrib[:, 2] == 0).all()
        scored = torch.tensor([1.0, 1, 0, 1, 1, 1])
        torch.testing.assert_close(out.s_now, out.E.sum((1, 2)) / (M_miss * scored).sum((1, 2)))
        assert not torch.equal(out_moved.E, out.E)
    with pytest.raises(ValueError, match="group_of must be -1 exactly at the context features"):
        ScoringModule(_model(), L, F, p_score=None, seed=0, topn=2, group_of=GROUP_OF, context=(2,))


def test_context_bases_leave_the_groups_and_are_checked():
    cfg = load_config(
        CONFIG, [*LHB, "features.context=[wind_dir]", "features.mask_groups.direction=[nacelle_dir,yaw_error]"]
    )
    names = list(spec_from_config(cfg).feature_names)
    groups = feature_groups(cfg)
    assert [names[i] for i in groups.context] == ["wind_dir_sin", "wind_dir_cos"]
    assert groups.members(names)["direction"][:2] == ["nacelle_dir_sin", "nacelle_dir_cos"]
    with pytest.raises(ConfigError, match="features.context: \\['gust'\\] are not base columns"):
        load_config(CONFIG, [*LHB, "features.context=[gust]"])
    with pytest.raises(ConfigError, match="'wind_dir' is in both features.context and 'direction'"):
        load_config(CONFIG, [*LHB, "features.mask_groups.direction=[wind_dir,nacelle_dir,yaw_error]"])
