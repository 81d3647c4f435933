"""SecAgg+ vectors: their sum gives the same model as task-aware FedAvg on plain replies."""

import numpy as np
import pytest
import torch
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from client.scope import param_group
from client.secagg_site import combine, contribution, group_order, group_weights
from server.aggregation import TaskAwareAggregator
from server.validation import expected_from_state, validate_reply

from .agg_fixtures import reply_arrays, reply_metrics, tiny_global

SITES = (  # (name, tasks, trunk count, head count, seed)
    ("A", ("cancer_risk",), 30, 12, 1),
    ("B", ("heart",), 10, 5, 2),
    ("C", ("cancer_risk", "heart"), 24, 24, 3),
)
NORMALISER = 32.0  # batch size x local steps, public


@pytest.fixture(scope="module")
def glob():
    torch.set_num_threads(1)
    return tiny_global()


def _site_vectors(glob, dp_clip=None):
    names = list(glob)
    vectors, replies = [], []
    for name, tasks, trunk, head, seed in SITES:
        arrays = reply_arrays(glob, tasks, seed=seed, scale=1e-3)
        metrics = reply_metrics(tasks, trunk=trunk, head=head)
        weights = group_weights(
            metrics, group_order(names), NORMALISER, dp_clip is not None
        )
        trained = {n: torch.from_numpy(a) for n, a in arrays.items()}
        vectors.append(contribution(names, glob, trained, weights, 1.0, dp_clip))
        replies.append(validate_reply(arrays, metrics, expected_from_state(glob), glob, max_update_norm=None, site=name))  # fmt: skip
    return names, vectors, replies


def _apply(glob, updates):
    return {n: glob[n] + updates[n].reshape(glob[n].shape) if n in updates else glob[n] for n in glob}  # fmt: skip


def test_sum_of_site_vectors_equals_task_aware_fedavg(glob):
    names, vectors, replies = _site_vectors(glob)
    mean = [
        np.mean(arrs, axis=0) for arrs in zip(*vectors, strict=True)
    ]  # SecAgg+ average
    updates, indicators = combine(names, mean)
    got = _apply(glob, updates)
    want = TaskAwareAggregator("fedavg").aggregate(glob, replies).state
    # covid19's head was trained by nobody: no update, indicator zero
    assert indicators["heads.covid19"] == 0.0
    assert not any(param_group(n) == "heads.covid19" for n in updates)
    for n in glob:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7)


def test_quantized_secagg_sum_is_within_quantization_step(glob):
    names, vectors, replies = _site_vectors(glob)
    clip, qrange = 1.0, 2**22
    quantized = [quantize(v, clip, qrange) for v in vectors]
    total = [np.sum(arrs, axis=0) for arrs in zip(*quantized, strict=True)]
    deq = dequantize(total, clip, qrange)
    k = len(vectors)
    summed = [d - (k - 1) * clip for d in deq]  # Flower's offset for k summed vectors
    updates, _ = combine(names, summed)
    want = TaskAwareAggregator("fedavg").aggregate(glob, replies).state
    got = _apply(glob, updates)
    step = 2 * clip / qrange
    for n in glob:
        # per-group division by the indicator (>= 5/32 here) scales the step
        assert float((got[n] - want[n]).abs().max()) < k * step * 32 / 5 + 1e-7


def test_refusing_site_sends_zeros_and_changes_nothing(glob):
    names = list(glob)
    weights = dict.fromkeys(group_order(names), 0.0)
    vec = contribution(names, glob, None, weights, 1.0)
    assert all(not np.any(v) for v in vec)


def test_dp_mode_clips_the_whole_update_and_weights_groups_uniformly(glob):
    names, vectors, _ = _site_vectors(glob, dp_clip=1e-3)
    for vec in vectors:
        body = vec[: len(names)]
        norm = float(
            np.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in body))
        )
        assert norm <= 1e-3 * (1 + 1e-5)
        assert set(np.concatenate(vec[len(names) :]).tolist()) <= {0.0, 1.0}


def test_combine_refuses_a_vector_of_the_wrong_length(glob):
    with pytest.raises(ValueError, match="expected"):
        combine(list(glob), [np.zeros(1)])
