"""Fusion heads: they learn, every parameter trains, and each one computes what its paper or code says.

The arithmetic checks below are written out independently (numpy, float64, the
papers' own layouts) and read the model's weights; they do not call the
modules they check.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.ccc import ccc_loss, ccc_np
from fusion.heads import HEADS
from fusion.models import build_model, list_heads

WINDOW = 32
ALL_DIMS = {"visual": 8, "audio": 6, "text": 5}
TINY = {"tcn": {"default": [16, 16]}, "kernel": 3, "dropout": 0.0, "hidden": 32, "k": 16, "d_model": 32, "heads": 2}
AV = ("visual", "audio")
AVT = ("visual", "audio", "text")

# (head, extra cfg, modalities): every head, both JCA-family variants, both LFAN forms
CASES = [
    ("concat", {}, AVT),
    ("lfan", {}, AVT),
    ("lfan", {"lfan_heads": 2}, AVT),
    ("jca", {}, AV),
    ("jca", {"variant": "dense"}, AV),
    ("rjca", {}, AVT),
    ("rjca", {"variant": "dense"}, AVT),
    ("rjcma", {}, AVT),
    ("grjca", {}, AVT),
    ("hgrjca", {"variant": "dense"}, AVT),
    ("avtca", {}, AVT),
]
IDS = [f"{h}-{'-'.join(f'{k}={v}' for k, v in e.items()) or 'default'}" for h, e, _ in CASES]


@pytest.fixture
def one_thread():
    """Two cores shared with other test processes: one torch thread is faster than two fighting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def synthetic(n: int, mods: tuple[str, ...], seed: int) -> tuple[dict[str, int], dict[str, torch.Tensor], torch.Tensor]:
    """Smooth random features; valence and arousal are fixed tanh-of-linear functions of every modality."""
    g = torch.Generator().manual_seed(seed)
    dims = {m: ALL_DIMS[m] for m in mods}
    x = {}
    for m, d in dims.items():
        z = torch.randn(n, d, WINDOW + 4, generator=g)
        x[m] = (torch.nn.functional.avg_pool1d(z, 5, 1) * 5 ** 0.5).transpose(1, 2)  # unit variance, smooth in time
    w = torch.Generator().manual_seed(123)  # the same function for train and validation
    lin_v = sum(x[m][..., :3] @ torch.randn(3, generator=w) for m in mods) / (3 * len(mods)) ** 0.5
    lin_a = sum(x[m][..., 3:5] @ torch.randn(2, generator=w) for m in mods) / (2 * len(mods)) ** 0.5
    return dims, x, torch.stack([torch.tanh(lin_v), torch.tanh(0.8 * lin_a)], dim=-1)


def test_registry_lists_every_head() -> None:
    assert list_heads() == sorted(["concat", "lfan", "jca", "rjca", "rjcma", "grjca", "hgrjca", "avtca"])
    assert set(HEADS) == set(list_heads())


@pytest.mark.parametrize("head,extra,mods", CASES, ids=IDS)
def test_head_learns_known_function(head: str, extra: dict, mods: tuple[str, ...], one_thread) -> None:
    torch.manual_seed(0)
    dims, x, y = synthetic(128, mods, seed=1)
    _, xv, yv = synthetic(32, mods, seed=2)
    model = build_model(head, dims, WINDOW, {**TINY, **extra})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        idx = torch.randint(0, 128, (16,))
        loss = ccc_loss(model({m: v[idx] for m, v in x.items()}), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(xv)
    assert pred.abs().max() <= 1
    cccs = [ccc_np(pred[..., d].numpy(), yv[..., d].numpy()) for d in range(2)]
    assert min(cccs) >= 0.9, f"validation CCC (valence, arousal) = {cccs}"


@pytest.mark.parametrize("head,extra,mods", CASES + [("avtca", {"n_classes": 3}, AVT)], ids=IDS + ["avtca-classify"])
def test_gradients_reach_every_parameter(head: str, extra: dict, mods: tuple[str, ...]) -> None:
    torch.manual_seed(1)
    dims, x, y = synthetic(6, mods, seed=3)
    model = build_model(head, dims, WINDOW, {**TINY, "dropout": 0.1, **extra})
    model.train()
    loss = ccc_loss(model(x), y)
    if extra.get("n_classes"):
        loss = loss + torch.nn.functional.cross_entropy(model.classify(x), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


# ---------------------------------------------------------------- arithmetic, written out independently

def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def regressor_np(reg, z: np.ndarray) -> np.ndarray:
    """Linear -> BatchNorm (eval: running stats) -> LeakyReLU(0.01) -> Linear, per frame."""
    h = z @ np_(reg.fc1.weight).T + np_(reg.fc1.bias)
    h = (h - np_(reg.bn.running_mean)) / np.sqrt(np_(reg.bn.running_var) + reg.bn.eps) * np_(reg.bn.weight) + np_(reg.bn.bias)
    h = np.where(h > 0, h, 0.01 * h)
    return h @ np_(reg.fc2.weight).T + np_(reg.fc2.bias)


def randomise_bn(model) -> None:
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)


def head_and_feats(head: str, mods: tuple[str, ...], extra: dict, seed: int = 0):
    torch.manual_seed(seed)
    widths = {"visual": 7, "audio": 5, "text": 4}
    cfg = {**TINY, "tcn": {m: [widths[m]] for m in mods}, **extra}
    model = build_model(head, {m: 3 for m in mods}, WINDOW, cfg).double().eval()
    randomise_bn(model)
    feats = [torch.randn(2, WINDOW, widths[m], dtype=torch.float64) for m in mods]
    return model.head, feats


@pytest.mark.parametrize("mods,iterations", [(AV, 1), (AVT, 2)])
def test_paper_variant_is_its_equations(mods: tuple[str, ...], iterations: int) -> None:
    head, feats = head_and_feats("rjca", mods, {"variant": "paper", "iterations": iterations})
    with torch.no_grad():
        got = head(feats).numpy()
    for b in range(2):
        xs = [np_(f[b]).T for f in feats]  # the paper's layout: X_m in R^{d_m x L}
        for layer in head.layers:
            J = np.concatenate(xs, axis=0)  # d x L
            d = J.shape[0]
            new = []
            for m, X in enumerate(xs):
                C = np.tanh(X @ np_(layer.w_j[m]) @ J.T / np.sqrt(d))  # d_m x d
                H = np.maximum(np_(layer.w_x[m]) @ X.T + np_(layer.w_c[m]) @ C.T, 0.0)  # k x d_m
                new.append((np_(layer.w_h[m]) @ H).T + X)  # d_m x L
            xs = new
        want = regressor_np(head.regressor, np.concatenate(xs, axis=0).T)
        np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mods", [AV, AVT])
def test_dense_variant_reproduces_published_co_attention(mods: tuple[str, ...]) -> None:
    """One iteration of the released code's arithmetic, sample by sample, time-major like that code."""
    head, feats = head_and_feats("rjca", mods, {"variant": "dense", "iterations": 1})
    layer = head.layers[0]
    # the 2-modality code projects J with Linear(d, d); the 3-modality code computes it and feeds raw J
    assert (layer.joint is not None) == (len(mods) == 2)
    with torch.no_grad():
        got = head(feats).numpy()
    for b in range(2):
        xs = [np_(f[b]) for f in feats]  # L x d_m
        joint = np.concatenate(xs, axis=1)  # L x d
        if layer.joint is not None:
            joint = joint @ np_(layer.joint.weight).T + np_(layer.joint.bias)
        scale = np.sqrt(joint.shape[1])
        out = []
        for m, x in enumerate(xs):
            key = x.T @ np_(layer.key[m].weight).T + np_(layer.key[m].bias)  # Linear(L, L) over time: d_m x L
            value = x @ np_(layer.value[m].weight).T + np_(layer.value[m].bias)  # L x d_m
            scores = np.tanh(key @ joint / scale)  # d_m x d
            weighted = np.maximum(np.tanh(value @ scores), 0.0)  # L x d
            out.append(x + np.maximum(weighted @ np_(layer.out[m].weight).T + np_(layer.out[m].bias), 0.0))
        want = regressor_np(head.regressor, np.concatenate(out, axis=1))
        np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-10)


def test_lfan_single_head_is_its_equations() -> None:
    head, feats = head_and_feats("lfan", AVT, {"lfan_heads": 1})
    with torch.no_grad():
        got = head(feats).numpy()
    n_mod, dim = 3, head.dim
    for b in range(2):
        xs = [np_(f[b]) for f in feats]
        proj = lambda lin, x: x @ np_(lin.weight).T + np_(lin.bias)  # noqa: E731
        Q = np.stack([proj(head.q[m], x) for m, x in enumerate(xs)], axis=1)  # L x M x D
        K = np.stack([proj(head.k[m], x) for m, x in enumerate(xs)], axis=1)
        V = np.stack([proj(head.v[m], x) for m, x in enumerate(xs)], axis=1)
        S = K @ Q.transpose(0, 2, 1) / np.sqrt(dim)
        S = np.exp(S - S.max(-1, keepdims=True))
        S /= S.sum(-1, keepdims=True)  # softmax over the last axis, per frame: M x M
        F = S @ V + V
        mu = F.reshape(WINDOW, -1).mean(1)[:, None, None]
        var = F.reshape(WINDOW, -1).var(1)[:, None, None]
        F = (F - mu) / np.sqrt(var + head.norm.eps) * np_(head.norm.weight) + np_(head.norm.bias)  # LayerNorm (M, D)
        z = np.concatenate([xs[0], F.reshape(WINDOW, n_mod * dim)], axis=1)  # visual is the leader
        want = z @ np_(head.out.weight).T + np_(head.out.bias)
        np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-10)


def layer_norm_np(x: np.ndarray, norm) -> np.ndarray:
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta (biased variance)."""
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + norm.eps) * np_(norm.weight) + np_(norm.bias)


def softmax_np(s: np.ndarray) -> np.ndarray:
    s = np.exp(s - s.max(-1, keepdims=True))
    return s / s.sum(-1, keepdims=True)


def linear_np(lin, x: np.ndarray) -> np.ndarray:
    y = x @ np_(lin.weight).T
    return y if lin.bias is None else y + np_(lin.bias)


def test_lfan_two_heads_is_abaw3_order() -> None:
    """F = LayerNorm_{M*D}(Dropout(O(concat_j(S_j V_j + V_j)))), S_j = softmax(Q_j K_j^T / sqrt(D/2)),
    concatenation head-major over (head, modality), O = Linear(M*D, M*D), no residual after O."""
    head, feats = head_and_feats("lfan", AVT, {"lfan_heads": 2, "lfan_dropout": 0.3})
    with torch.no_grad():
        got = head(feats).numpy()
    n_mod, dim, h = 3, head.dim, 2
    dh = dim // h
    assert head.proj.in_features == head.proj.out_features == n_mod * dim
    for b in range(2):
        xs = [np_(f[b]) for f in feats]
        Q = np.stack([linear_np(head.q[m], x) for m, x in enumerate(xs)], axis=1)  # L x M x D
        K = np.stack([linear_np(head.k[m], x) for m, x in enumerate(xs)], axis=1)
        V = np.stack([linear_np(head.v[m], x) for m, x in enumerate(xs)], axis=1)
        per_head = []
        for j in range(h):
            sl = slice(j * dh, (j + 1) * dh)
            S = softmax_np(Q[..., sl] @ K[..., sl].transpose(0, 2, 1) / np.sqrt(dh))  # L x M x M
            per_head.append(S @ V[..., sl] + V[..., sl])  # L x M x dh
        cat = np.stack(per_head, axis=1).reshape(WINDOW, h * n_mod * dh)  # [head][modality][dh]
        F = layer_norm_np(linear_np(head.proj, cat), head.norm)  # eval: dropout is the identity
        z = np.concatenate([xs[0], F], axis=1)  # visual is the leader
        want = linear_np(head.out, z)
        np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-6)


def gelu_np(x: np.ndarray) -> np.ndarray:
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def test_avtca_cross_block_is_released_formula() -> None:
    """x' = x + a + MLP(LN(a)), a = Proj(softmax(q k^T / sqrt(dh)) v) per head,
    q = LN_q(x) W_q, [k | v] = LN_kv(y) W_kv (no bias on W_q, W_kv)."""
    torch.manual_seed(1)
    model = build_model("avtca", {"visual": 3, "audio": 3}, WINDOW, {**TINY, "d_model": 16, "heads": 4}).double().eval()
    block = model.head.cross[0][0]
    with torch.no_grad():  # LayerNorm affine terms away from (1, 0), so a wrong norm shows
        for norm in (block.norm_q, block.norm_kv, block.norm_mlp):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    assert block.q.bias is None and block.kv.bias is None and block.proj.bias is not None
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    y = torch.randn(2, 7, 16, dtype=torch.float64)
    with torch.no_grad():
        got = block(x, y).numpy()
    d, h = 16, 4
    dh = d // h
    for b in range(2):
        xb, yb = np_(x[b]), np_(y[b])
        q = layer_norm_np(xb, block.norm_q) @ np_(block.q.weight).T  # 10 x d
        kv = layer_norm_np(yb, block.norm_kv) @ np_(block.kv.weight).T  # 7 x 2d
        k, v = kv[:, :d], kv[:, d:]
        heads = [softmax_np(q[:, j * dh:(j + 1) * dh] @ k[:, j * dh:(j + 1) * dh].T / np.sqrt(dh))
                 @ v[:, j * dh:(j + 1) * dh] for j in range(h)]
        a = linear_np(block.proj, np.concatenate(heads, axis=1))
        hidden = gelu_np(linear_np(block.mlp[0], layer_norm_np(a, block.norm_mlp)))
        want = xb + a + linear_np(block.mlp[3], hidden)
        np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-6)
        # the old pre-LN form, x + a + MLP(LN(x + a)), is measurably different
        old = xb + a + linear_np(block.mlp[3], gelu_np(linear_np(block.mlp[0], layer_norm_np(xb + a, block.norm_mlp))))
        assert np.abs(old - want).max() > 1e-2


def test_tcn_batchnorm_follows_the_released_forms() -> None:
    dims = {"visual": 4, "audio": 3, "text": 2}
    abaw3 = build_model("lfan", dims, WINDOW, {**TINY, "lfan_heads": 2})
    assert {m: enc.norm is not None for m, enc in abaw3.encoders.items()} == {"visual": True, "audio": True, "text": True}
    assert build_model("lfan", dims, WINDOW, TINY).spec["cfg"]["tcn_batchnorm"] is False  # ABAW2's LFAN has none
    assert build_model("rjcma", dims, WINDOW, {**TINY, "variant": "dense"}).spec["cfg"]["tcn_batchnorm"] is True
    for head, extra in (("rjcma", {}), ("concat", {}), ("avtca", {})):
        model = build_model(head, dims, WINDOW, {**TINY, **extra})
        assert model.spec["cfg"]["tcn_batchnorm"] is False
        assert all(enc.norm is None for enc in model.encoders.values())
    forced = build_model("concat", dims, WINDOW, {**TINY, "tcn_batchnorm": True})
    assert all(enc.norm is not None for enc in forced.encoders.values())
    again = build_model(**forced.spec)
    again.load_state_dict(forced.state_dict())  # the resolved choice travels with the checkpoint spec
    with pytest.raises(ValueError, match="tcn_batchnorm must be true, false or null"):
        build_model("concat", dims, WINDOW, {**TINY, "tcn_batchnorm": "yes"})


def test_a_checkpoint_of_another_architecture_is_one_clear_line() -> None:
    """A run trained before a head changed (e.g. no BatchNorm after the TCNs) must not load half a model."""
    from fusion.models import load_weights

    dims = {"visual": 4, "audio": 3}
    before = build_model("rjca", dims, WINDOW, {**TINY, "variant": "dense", "tcn_batchnorm": False})
    now = build_model("rjca", dims, WINDOW, {**TINY, "variant": "dense"})
    with pytest.raises(ValueError) as err:
        load_weights(now, before.state_dict(), "runs/x/best.pt")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("runs/x/best.pt: checkpoint does not fit the 'rjca' model")
    assert "10 missing" in msg and "encoders.audio.norm" in msg  # weight, bias and 3 running stats, per modality
    load_weights(before, before.state_dict(), "same architecture")  # fits: no error


# ---------------------------------------------------------------- gating invariants

def force_last(fc: torch.nn.Linear) -> None:
    """Gate logits (0, ..., 0, 1e4): after /T = 0.1, exp(-1e5) underflows to 0, so the softmax is exactly one-hot."""
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
        fc.bias[-1] = 1e4


@pytest.mark.parametrize("variant", ["paper", "dense"])
def test_grjca_gates_sum_to_one_and_forced_gate_is_rjca(variant: str) -> None:
    rjca, feats = head_and_feats("rjca", AVT, {"variant": variant, "iterations": 2})
    for act in ("identity", "relu"):
        grjca, _ = head_and_feats("grjca", AVT, {"variant": variant, "iterations": 2, "gate_activation": act}, seed=5)
        missing, unexpected = grjca.load_state_dict(rjca.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("gates.") for k in missing)  # same weights, gates aside
        with torch.no_grad():
            weights = grjca.gate_weights(grjca.attend(feats))
            assert all(w.shape == (2, WINDOW, 3) and (w >= 0).all() for w in weights)  # l+1 candidates
            for w in weights:
                torch.testing.assert_close(w.sum(-1), torch.ones(2, WINDOW, dtype=torch.float64), rtol=0, atol=1e-12)
            for fc in grjca.gates:
                force_last(fc)
            got = grjca(feats)
            if act == "identity":
                assert torch.equal(got, rjca(feats))  # exactly RJCA
            else:  # RJCA's regressor on ReLU of RJCA's attended features
                want = rjca.regressor(torch.relu(torch.cat(rjca.attend(feats)[-1], dim=-1)))
                assert torch.equal(got, want)


def test_hgrjca_one_iteration_equals_grjca() -> None:
    for act in ("relu", "identity"):
        grjca, feats = head_and_feats("grjca", AVT, {"iterations": 1, "gate_activation": act})
        hg, _ = head_and_feats("hgrjca", AVT, {"iterations": 1, "gate_activation": act}, seed=9)
        assert hg.top_gates is None  # a softmax over one candidate is identically 1: not built
        state = {}
        for key, value in grjca.state_dict().items():
            if key.startswith("gates."):  # GRJCA's gate of modality m is HGRJCA's level-1 gate of m
                _, m, name = key.split(".")
                key = f"gates.{m}.0.{name}"
            state[key] = value
        hg.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert torch.equal(hg(feats), grjca(feats))


def test_hgrjca_gates_sum_to_one_and_forced_gates_are_rjca() -> None:
    rjca, feats = head_and_feats("rjca", AVT, {"iterations": 2})
    hg, _ = head_and_feats("hgrjca", AVT, {"iterations": 2, "gate_activation": "identity"}, seed=4)
    missing, unexpected = hg.load_state_dict(rjca.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("gates.", "top_gates.")) for k in missing)
    with torch.no_grad():
        low, top = hg.gate_weights(hg.attend(feats))
        ones = torch.ones(2, WINDOW, dtype=torch.float64)
        for w in [w for per_mod in low for w in per_mod] + top:
            torch.testing.assert_close(w.sum(-1), ones, rtol=0, atol=1e-12)
        assert [w.shape[-1] for w in top] == [2, 2, 2]
        for fcs in hg.gates:
            for fc in fcs:
                force_last(fc)
        for fc in hg.top_gates:
            force_last(fc)
        assert torch.equal(hg(feats), rjca(feats))


# ---------------------------------------------------------------- building and input checks

def test_default_widths_and_overrides() -> None:
    model = build_model("concat", {"visual": 10, "audio": 5, "text": 7, "mfcc": 39}, 300)
    widths = {m: enc.channels for m, enc in model.encoders.items()}
    assert widths == {"visual": [256, 256, 128, 128], "audio": [64, 64, 32, 32],
                      "text": [256, 256, 128, 128], "mfcc": [64, 64, 32, 32]}
    assert model.modalities == ["visual", "audio", "text", "mfcc"]
    assert model.receptive_field["visual"] == 121
    model = build_model("concat", {"visual": 10, "audio": 5}, 300, {"tcn": {"audio": [8, 4]}, "kernel": 3})
    assert model.encoders["audio"].channels == [8, 4] and model.encoders["audio"].receptive_field == 13


def test_spec_rebuilds_the_same_model() -> None:
    model = build_model("grjca", {"visual": 4, "audio": 3}, WINDOW, {**TINY, "variant": "dense"})
    again = build_model(**model.spec)
    again.load_state_dict(model.state_dict())  # same architecture, parameter for parameter
    assert again.spec == model.spec


def test_window_is_fixed_for_joint_attention_heads() -> None:
    dims = {"visual": 4, "audio": 3}
    x = {m: torch.randn(2, WINDOW - 2, d) for m, d in dims.items()}
    for head in ("jca", "rjca", "grjca", "hgrjca"):
        with pytest.raises(ValueError, match=f"exactly {WINDOW} frames"):
            build_model(head, dims, WINDOW, TINY)(x)
    for head in ("concat", "lfan", "avtca"):  # attention across modalities or position-encoded: any length
        assert build_model(head, dims, WINDOW, TINY)(x).shape == (2, WINDOW - 2, 2)


def test_bad_inputs_and_configs_fail_clearly() -> None:
    dims = {"visual": 4, "audio": 3}
    model = build_model("concat", dims, WINDOW, TINY)
    with pytest.raises(ValueError, match="missing audio"):
        model({"visual": torch.randn(1, WINDOW, 4)})
    with pytest.raises(ValueError, match=r"'audio' must be \[B, L, 3\]"):
        model({"visual": torch.randn(1, WINDOW, 4), "audio": torch.randn(1, WINDOW, 5)})
    with pytest.raises(ValueError, match="unknown fusion head 'nope'"):
        build_model("nope", dims, WINDOW)
    with pytest.raises(ValueError, match="unknown setting.*itterations"):
        build_model("rjca", dims, WINDOW, {"itterations": 2})
    with pytest.raises(ValueError, match="exactly 2 modalities"):
        build_model("jca", {**dims, "text": 2}, WINDOW)
    with pytest.raises(ValueError, match="exactly 1 iteration"):
        build_model("jca", dims, WINDOW, {"iterations": 2})
    with pytest.raises(ValueError, match="at least 3 modalities"):
        build_model("rjcma", dims, WINDOW)
    with pytest.raises(ValueError, match="'visual' modality as leader"):
        build_model("lfan", {"audio": 3, "text": 2}, WINDOW)
    with pytest.raises(ValueError, match="variant must be one of"):
        build_model("rjca", dims, WINDOW, {"variant": "fancy"})
    with pytest.raises(ValueError, match="tcn names modality"):
        build_model("concat", dims, WINDOW, {"tcn": {"vision": [8]}})
    with pytest.raises(RuntimeError, match="n_classes"):
        build_model("avtca", dims, WINDOW, TINY).classify({m: torch.randn(1, WINDOW, d) for m, d in dims.items()})


def test_avtca_classify_pools_valid_frames() -> None:
    torch.manual_seed(0)
    dims = {"visual": 4, "audio": 3}
    model = build_model("avtca", dims, WINDOW, {**TINY, "n_classes": 5}).eval()
    x = {m: torch.randn(2, WINDOW, d) for m, d in dims.items()}
    mask = torch.ones(2, WINDOW, dtype=torch.bool)
    mask[:, 20:] = False
    with torch.no_grad():
        logits = model.classify(x, mask)
        fused = model.head.fuse(model.encode(x))
        want = model.head.classifier(fused[:, :20].mean(dim=1))
    assert logits.shape == (2, 5)
    torch.testing.assert_close(logits, want)
