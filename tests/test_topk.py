"""TopK approaches and the GABA switch against hand-computed examples."""

import pytest
import torch

from sdmcl.models.topk import TopK, gaba_response, linear_decay_k

H = torch.tensor([[3.0, -1.0, 5.0, 1.0, 2.0],
                  [0.5, 4.0, -2.0, 4.5, 0.0]])


def test_mask_keeps_k_largest_of_relu():
    out = TopK(5, 2, "mask")(H)
    assert torch.equal(out, torch.tensor([[3.0, 0, 5.0, 0, 0], [0, 4.0, 0, 4.5, 0]]))


def test_mask_with_fewer_positive_than_k_keeps_zeros():
    h = torch.tensor([[-1.0, 2.0, -3.0, -4.0]])
    out = TopK(4, 3, "mask")(h)
    assert torch.equal(out, torch.tensor([[0.0, 2.0, 0.0, 0.0]]))


def test_subtract_removes_kth_value_leaving_k_minus_1_active():
    # row 1: relu = [3,0,5,1,2], v_2 = 3 -> [0,0,2,0,0]; row 2: relu=[.5,4,0,4.5,0], v_2=4 -> [0,0,0,.5,0]
    out = TopK(5, 2, "subtract")(H)
    assert torch.allclose(out, torch.tensor([[0.0, 0, 2.0, 0, 0], [0, 0, 0, 0.5, 0]]))


def test_linear_decay_schedule():
    # k_max 100 → k_min 10 over 9 epochs: 10 per epoch
    assert [linear_decay_k(e, 100, 10, 9) for e in (0, 1, 4, 9, 20)] == [100, 90, 60, 10, 10]
    act = TopK(5, 1, "linear_decay_mask", k_transition_epochs=4)
    act.epoch = 0
    assert torch.equal(act(H), torch.relu(H))  # k = 5: everything kept
    act.epoch = 2  # k = 5 - 4*2/4 = 3
    assert act.current_k() == 3
    assert torch.equal(act(H), torch.tensor([[3.0, 0, 5.0, 0, 2.0], [0.5, 4.0, 0, 4.5, 0]]))
    act.epoch = 10
    assert act.current_k() == 1


def test_linear_decay_subtract():
    act = TopK(5, 1, "linear_decay_subtract", k_transition_epochs=4)
    act.epoch = 2  # k = 3: v_3 row 1 = 2, row 2 = 0.5
    assert torch.allclose(act(H), torch.tensor([[1.0, 0, 3.0, 0, 0], [0, 3.5, 0, 4.0, 0]]))


def test_gaba_response_over_counts():
    T = 100
    c = torch.tensor([0, 25, 50, 75, 100, 1000])
    assert torch.allclose(gaba_response(c, T), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 1.0]))


def test_gaba_switch_excites_then_inhibits():
    act = TopK(5, 2, "gaba_switch", gaba_switch_activations=10)
    act.train()
    # counters 0: g = -1, out = relu(r + v_3); row 1 r=[3,0,5,1,2], v_3=2 -> [5,2,7,3,4]
    out = act(H[:1])
    assert torch.allclose(out, torch.tensor([[5.0, 2.0, 7.0, 3.0, 4.0]]))
    assert act.gaba_counters.tolist() == [1, 1, 1, 1, 1]
    # fully switched: g = +1 → relu(r - v_3) = [1,0,3,0,0]: exactly Top-k (k=2) active
    act.gaba_counters.fill_(10)
    out = act(H[:1])
    assert torch.allclose(out, torch.tensor([[1.0, 0.0, 3.0, 0.0, 0.0]]))
    assert act.gaba_counters.tolist() == [11, 10, 11, 10, 10]


def test_gaba_half_switched_neuron():
    act = TopK(5, 2, "gaba_switch", gaba_switch_activations=10)
    act.gaba_counters.copy_(torch.tensor([5, 10, 10, 10, 0]))  # g = [0, 1, 1, 1, -1]
    out = act(H[:1])  # r=[3,0,5,1,2], v_3=2: [3-0, 0, 5-2, 0, 2+2]
    assert torch.allclose(out, torch.tensor([[3.0, 0.0, 3.0, 0.0, 4.0]]))


def test_gaba_counts_only_in_training():
    act = TopK(5, 2, "gaba_switch", gaba_switch_activations=10)
    act.eval()
    act(H)
    assert act.gaba_counters.sum() == 0


def test_threshold_is_detached():
    h = H.clone().requires_grad_(True)
    out = TopK(5, 2, "subtract")(h)
    out.sum().backward()
    # gradient 1 only where the output is active (entry 2 of row 1, entry 3 of row 2), none via v_k
    assert torch.equal(h.grad, torch.tensor([[0.0, 0, 1, 0, 0], [0, 0, 0, 1, 0]]))


def test_mask_gradient_flows_only_through_kept_entries():
    h = H.clone().requires_grad_(True)
    TopK(5, 2, "mask")(h).sum().backward()
    assert torch.equal(h.grad, torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 1, 0]]))


@pytest.mark.parametrize("approach", ["mask", "subtract", "linear_decay_mask", "linear_decay_subtract", "gaba_switch"])
def test_counters_are_state_only_for_gaba(approach):
    act = TopK(5, 2, approach)
    assert ("gaba_counters" in act.state_dict()) == (approach == "gaba_switch")
