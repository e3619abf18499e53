"""Ranking by evidence: the zero-cost scores against computations by hand, the cost-aware
statistics against hand counts, out-of-sample fitting that never sees what it ranks, and the
rule that picks the default signal."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from proxy.zero_cost import dss, grad_norm, naswot, snip, synflow, zero_cost_scores
from ranking.signals import (choose_default, combine, evaluate, evaluate_all, fit_weight, groups_of, meets_goal,
                             out_of_sample, tau_standard_error)
from ranking.statistics import (bucket_pairs, bucket_tau_b, bucket_tau_b_rows, cost_buckets, near_pairs, pair_agreement,
                                regret_at, spearman_rows, tau_b_rows)


def _linear(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


# --- zero-cost scores, by hand ------------------------------------------------------------------

def test_synflow_of_a_two_layer_linear_network_is_twice_its_path_sum() -> None:
    w1, w2 = [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], [[2.0, -1.0], [0.5, 4.0]]
    net = nn.Sequential(_linear(w1), _linear(w2))
    a1, a2 = np.abs(w1), np.abs(w2)
    # R = 1' |W2| |W1| 1; each layer's sum of |W * dR/dW| is R again (the paths through it)
    r = np.ones(2) @ a2 @ a1 @ np.ones(3)
    assert synflow(net, (3,)) == pytest.approx(2 * r)
    assert net[0].weight[0, 1].item() == -2.0  # the network itself keeps its signs


def test_grad_norm_and_snip_equal_the_cross_entropy_gradient_written_out() -> None:
    w = [[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]
    net = _linear(w)
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0], [2.0, 1.0, 1.0], [-1.0, 0.5, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    logits = x.numpy() @ np.array(w).T
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    g = (p - np.eye(2)[y.numpy()]) / len(y)  # dL/dlogits of the mean cross-entropy
    dw = g.T @ x.numpy()
    assert grad_norm(net, x, y) == pytest.approx(np.linalg.norm(dw), rel=1e-5)
    assert snip(net, x, y) == pytest.approx(np.abs(dw * np.array(w)).sum(), rel=1e-5)


def test_naswot_is_the_log_determinant_of_the_relu_code_kernel() -> None:
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        layer.bias.copy_(torch.tensor([0.0, -0.5, 0.25]))
    net = nn.Sequential(layer, nn.ReLU())
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    codes = ((x.numpy() @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()) > 0).astype(float)
    kernel = 3 - np.abs(codes[:, None, :] - codes[None, :, :]).sum(-1)  # units minus Hamming distance
    sign, logdet = np.linalg.slogdet(kernel)
    assert sign != 0 and naswot(net, x) == pytest.approx(logdet)
    assert naswot(nn.Sequential(nn.Linear(2, 3), nn.Hardswish()), x) is None  # no ReLU-family unit
    one_unit = nn.Sequential(nn.Linear(2, 1), nn.ReLU())
    code = (one_unit[0](x).detach().numpy() > 0).astype(float)
    assert np.linalg.matrix_rank(1 - np.abs(code[:, None, :] - code[None, :, :]).sum(-1)) < len(x)
    with pytest.raises(ValueError, match="singular"):  # its slogdet is rounding noise, not a score
        naswot(one_unit, x)


class Attention(nn.Module):
    def __init__(self, weight: list[list[float]]) -> None:
        super().__init__()
        self.proj = _linear(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, weight: list[list[float]]) -> None:
        super().__init__()
        self.fc = _linear(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_dss_is_attention_diversity_plus_feed_forward_saliency_written_out() -> None:
    wa, wm = [[1.0, -2.0], [0.5, 1.0]], [[2.0, 1.0], [-1.0, 3.0], [0.5, 0.5]]
    net = nn.Sequential(Attention(wa), Mlp(wm), _linear([[1.0, 1.0, 1.0]]))  # the head counts for neither
    a, m, h = np.abs(wa), np.abs(wm), np.ones((1, 3))
    ones = np.ones(2)
    d_m = (h.T @ np.ones(1))[:, None] * (a @ ones)[None, :]  # dR/dWm = h' (|Wa| 1)'
    d_a = (m.T @ h.T @ np.ones(1))[:, None] * ones[None, :]  # rank one: (|Wm|' h') 1'
    diversity = np.linalg.norm(d_a, "nuc") * np.linalg.norm(a, "nuc")
    saliency = np.abs(d_m * m).sum()
    assert dss(net, (2,)) == pytest.approx(diversity + saliency)


def test_zero_cost_scores_of_a_design_say_why_naswot_is_undefined(tmp_path) -> None:
    from proxy import ProxyData, ProxyProtocol
    from space.paper import PAPER_NAMED_SPECS

    protocol = ProxyProtocol(dataset="fashion-mnist", train_size=64, val_size=32)
    data = ProxyData(protocol.data_config(), cache_dir=str(tmp_path))
    scores = zero_cost_scores(PAPER_NAMED_SPECS["II/hswish-eca"], protocol, data, images=32)
    assert scores["naswot"].value is None and "ReLU" in scores["naswot"].undefined
    assert all(scores[k].value is not None and scores[k].value > 0 and scores[k].cpu_s >= 0
               for k in ("grad_norm", "snip", "synflow", "dss"))
    again = zero_cost_scores(PAPER_NAMED_SPECS["II/hswish-eca"], protocol, data, images=32)
    assert {k: v.value for k, v in again.items()} == {k: v.value for k, v in scores.items()}  # seeded
    relu6 = zero_cost_scores(PAPER_NAMED_SPECS["I/local-relu6-g4"], protocol, data, images=32)
    assert relu6["naswot"].value is not None and math.isfinite(relu6["naswot"].value)


# --- cost-aware statistics, by hand ------------------------------------------------------------

def test_cost_buckets_and_the_tau_b_inside_them_by_hand() -> None:
    flops = [1.00, 1.02, 1.05, 1.08, 2.00, 1.01]
    assert cost_buckets(flops, 0.03) == [[0, 5, 1], [2, 3], [4]]
    assert sorted(bucket_pairs(flops, 0.03)) == [(0, 1), (0, 5), (2, 3), (5, 1)]
    signal = [3.0, 1.0, 5.0, 5.0, 0.0, 2.0]
    target = [2.0, 1.0, 7.0, 8.0, 9.0, 2.0]
    # pairs (0,5): signal 3>2, target tied; (0,1): 3>1, 2>1 concordant; (5,1): 2>1, 2>1 concordant;
    # (2,3): signal tied, target 7<8. Untied in the signal: 3, in the target: 3; concordant 2, discordant 0.
    assert bucket_tau_b(signal, target, flops, 0.03) == pytest.approx(2 / math.sqrt(3 * 3))


def test_the_row_statistics_equal_scipy_and_the_bucket_pairs_row_by_row() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 4, (50, 9)).astype(float), rng.integers(0, 3, (50, 9)).astype(float)  # many ties
    costs = rng.choice([1.0, 1.01, 1.02, 1.05, 1.2, 2.0], (50, 9))
    x[0] = 2.0  # a constant row: every statistic NaN there
    taus, rhos, buckets = tau_b_rows(x, y), spearman_rows(x, y), bucket_tau_b_rows(x, y, costs, 0.03)
    for k in range(len(x)):  # every row against scipy and against the pair list of its own buckets
        assert taus[k] == pytest.approx(stats.kendalltau(x[k], y[k]).statistic, abs=1e-12, nan_ok=True)
        assert rhos[k] == pytest.approx(stats.spearmanr(x[k], y[k]).statistic, abs=1e-12, nan_ok=True)
        pairs = np.array(bucket_pairs(costs[k], 0.03), dtype=int).reshape(-1, 2)
        dx, dy = (np.sign(v[k][pairs[:, 0]] - v[k][pairs[:, 1]]) for v in (x, y))
        untied = np.count_nonzero(dx) * np.count_nonzero(dy)
        assert buckets[k] == pytest.approx(np.sum(dx * dy) / math.sqrt(untied) if untied else math.nan,
                                           abs=1e-12, nan_ok=True)
    assert np.isnan(taus[0]) and np.isnan(rhos[0]) and np.isfinite(buckets).sum() > 10


def test_equal_parameter_pairs_and_regret_by_hand() -> None:
    params = [100.0, 100.5, 101.5, 200.0]
    assert near_pairs(params, 0.01) == [(0, 1), (1, 2)]  # 101.5 vs 100: 1.5% apart
    signal, target = [1.0, 1.0, 3.0, 0.0], [70.0, 71.0, 72.0, 60.0]
    assert pair_agreement(signal, target, near_pairs(params, 0.01)) == (1.5, 2)  # a tie counts half
    flops = [0.9e9, 1.0e9, 1.2e9, 0.5e9]
    assert regret_at(1.0e9, signal, target, flops) == (1.0, 3)  # 0 and 1 tie: the cheaper, 0 (70), is picked
    assert regret_at(1.2e9, signal, target, flops) == (0.0, 4)
    assert regret_at(0.4e9, signal, target, flops)[1] == 0


# --- combinations, out of sample ---------------------------------------------------------------

def test_combinations_by_hand() -> None:
    measured, params = [3.0, 1.0, 2.0], [10.0, 20.0, 40.0]
    z = lambda v: (np.array(v) - np.mean(v)) / np.std(v)
    assert combine("proxy+params", {"proxy": measured, "params": params}, 2.0) == pytest.approx(
        z(measured) + 2.0 * z(np.log(params)))
    assert list(combine("proxy-params-rank", {"proxy": measured, "params": params})) == [2.0, 1.5, 2.5]
    # params-then-proxy: counts within 1% are one group, which the proxy orders
    order = combine("params-then-proxy", {"proxy": [5.0, 1.0, 0.0], "params": [100.0, 100.5, 300.0]})
    assert order[0] > order[1] and order[2] > order[0]


def _table_rows() -> tuple[dict[str, list[float]], list[float], list[dict]]:
    rng = np.random.default_rng(3)
    params = list(rng.uniform(4e6, 10e6, 12))
    target = [70 + 2 * np.log(p / 4e6) + rng.normal(0, 0.3) for p in params]
    proxy = [t + rng.normal(0, 1.0) for t in target]
    sources = [{"table": t} for t in "AAAABBBBCCCC"]
    return {"proxy": proxy, "params": params}, target, sources


def test_leave_one_table_out_never_sees_the_table_it_ranks() -> None:
    columns, target, sources = _table_rows()
    groups, how = groups_of(sources)
    assert how == "leave-one-table-out" and groups == list("AAAABBBBCCCC")
    values, weights = out_of_sample("proxy+params", columns, target, groups)
    poisoned = list(target)
    poisoned[4:8] = [-t for t in target[4:8]]  # table B's targets turned upside down
    again, weights_again = out_of_sample("proxy+params", columns, poisoned, groups)
    assert list(again[4:8]) == list(values[4:8]) and weights_again["B"] == weights["B"]  # its ranking unchanged
    assert weights_again["A"] != weights["A"] or weights_again["C"] != weights["C"]  # the others saw it
    assert weights["B"] == fit_weight([columns["proxy"][i] for i in range(12) if groups[i] != "B"],
                                      [columns["params"][i] for i in range(12) if groups[i] != "B"],
                                      [target[i] for i in range(12) if groups[i] != "B"])
    assert groups_of([{}, {}, {"table": "x"}])[1] == "leave-one-out"


def test_the_default_is_parameter_count_unless_a_signal_beats_it_where_counting_cannot_decide() -> None:
    columns, target, sources = _table_rows()
    flops = [p * 200 for p in columns["params"]]
    found = {k: e.to_dict() for k, e in evaluate_all({**columns, "flops": flops}, target, sources,
                                                     {"params": 0.0, "flops": 0.0, "proxy": 100.0},
                                                     measured=["proxy"], n_resamples=200).items()}
    assert set(found) >= {"params", "flops", "proxy", "proxy+params", "proxy-params-rank", "params-then-proxy"}
    choices = ("proxy", "params", "flops", "proxy+params", "proxy-params-rank", "params-then-proxy")
    # the targets follow the parameter count, the proxy adds noise to them: counting stays the default
    assert found["params"]["tau_b"] > found["proxy"]["tau_b"] and not meets_goal(found["proxy"], found["params"])
    assert choose_default(found, choices) == "params"
    base = {"tau_b": 0.7, "spearman": 0.8, "bucket_tau_b": 0.9, "equal_params_agreed": 3.0, "equal_params_pairs": 6,
            "regret": {"1.3": [0.0, 5], "0.75": [0.5, 2]}}
    better = {**base, "equal_params_agreed": 4.0}
    worse = {**better, "bucket_tau_b": 0.8}
    worse_regret = {**better, "regret": {"1.3": [0.2, 5], "0.75": [0.0, 2]}}
    assert not meets_goal(worse_regret, base) and not meets_goal(base, base)
    assert meets_goal(better, base) and not meets_goal(worse, base)
    assert choose_default({"params": base, "proxy": better}, choices) == "proxy"
    assert choose_default({"params": base, "proxy": better, "proxy+params": {**better, "tau_b": 0.75}},
                          choices) == "proxy+params"  # of the winners, the best tau-b
    no_pairs = {**base, "equal_params_agreed": 0.0, "equal_params_pairs": 0}  # then better on tau-b decides
    assert meets_goal({**no_pairs, "tau_b": 0.8}, no_pairs) and not meets_goal(no_pairs, no_pairs)
    assert choose_default({"params": base, "proxy": worse}, choices) == "params"


def test_an_undefined_score_is_left_out_and_counted() -> None:
    e = evaluate("naswot", [None, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0],
                 [1.0, 2.0, 3.0, 4.0], n_resamples=100)
    assert (e.n, e.undefined, e.tau_b) == (3, 1, 1.0)
    assert tau_standard_error(18) == pytest.approx(math.sqrt(2 * 41 / (9 * 18 * 17)))
