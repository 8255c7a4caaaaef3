import numpy as np
import pytest
import scipy.sparse as sp
import torch

from webly.core.errors import WeblyError
from webly.training.config import TrainConfig, per_rank_batch
from webly.training.losses import (
    cross_entropy,
    dense_targets,
    generalized_ce,
    multilabel_bce,
    weighted_softmax_ce,
)
from webly.training.models import (
    create_backbone,
    head_prefix,
    load_all_but_head,
    uses_channels_last,
)
from webly.training.sampling import (
    JITTER,
    BalancedSampler,
    ShuffleSampler,
    groups_from_labels,
)


def test_unknown_backbone_lists_close_names():
    with pytest.raises(WeblyError, match="unknown backbone 'resnest101'.*resnest101e"):
        create_backbone("resnest101", 10)


def test_finetune_transfer_keeps_all_but_last_layer():
    torch.manual_seed(0)
    pre = create_backbone("test_resnet", 50)
    new = create_backbone("test_resnet", 7)
    report = load_all_but_head(new, pre.state_dict())
    head = head_prefix(new)
    assert head == "fc" and report.reinitialised == ["fc.bias", "fc.weight"]
    for k, v in new.state_dict().items():
        if k.startswith("fc."):
            assert v.shape[0] == 7
        else:
            assert torch.equal(v, pre.state_dict()[k]), k


def test_transfer_from_another_backbone_names_layers():
    with pytest.raises(WeblyError, match="another backbone.*missing: .*unexpected: "):
        load_all_but_head(create_backbone("test_resnet", 5), create_backbone("test_efficientnet",
                                                                             5).state_dict())


def test_channels_last_default_skips_resnest():
    assert uses_channels_last("resnext101_32x8d") and uses_channels_last("efficientnet_b4")
    assert not uses_channels_last("resnest101e") and uses_channels_last("resnest101e", "on")


def test_losses():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    idx = torch.tensor([[0, 2], [1, -1]])
    w = torch.tensor([[1.0, 0.5], [1.0, 0.0]])
    logp = torch.log_softmax(logits, 1)
    want = (-(logp[0, 0] + 0.5 * logp[0, 2]) - logp[1, 1]) / 2
    assert weighted_softmax_ce(logits, idx, w).item() == pytest.approx(want.item())
    want_n = (-(logp[0, 0] + 0.5 * logp[0, 2]) / 1.5 - logp[1, 1]) / 2
    assert weighted_softmax_ce(logits, idx, w,
                               normalise=True).item() == pytest.approx(want_n.item())
    assert dense_targets(idx, w, 3).tolist() == [[1, 0, 0.5], [0, 1, 0]]
    # BCE by hand on the 2x3 example: targets [[1, 0, 0.5], [0, 1, 0]], summed, over the batch
    import math

    def bce(z, t):
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))
    targets = [[1, 0, 0.5], [0, 1, 0]]
    by_hand = sum(bce(z, t) for zs, ts in zip(logits.tolist(), targets, strict=True)
                  for z, t in zip(zs, ts, strict=True)) / 2
    assert multilabel_bce(logits, idx, w).item() == pytest.approx(by_hand, rel=1e-5)
    assert cross_entropy(logits, idx, w).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).item())


def test_generalized_ce_by_hand_and_its_limits():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    idx = torch.tensor([[0, 2], [1, -1]])
    w = torch.tensor([[1.0, 0.5], [1.0, 0.0]])
    p = torch.softmax(logits, 1)
    q = 0.7
    want = ((1 - p[0, 0] ** q) / q + 0.5 * (1 - p[0, 2] ** q) / q + (1 - p[1, 1] ** q) / q) / 2
    assert generalized_ce(logits, idx, w, q).item() == pytest.approx(want.item(), rel=1e-5)
    # q = 1 is the mean absolute error 1 - p_y; q -> 0 approaches CE
    one = torch.tensor([[0], [1]])
    assert generalized_ce(logits, one, torch.ones(2, 1), 1.0).item() == pytest.approx(
        (2 - p[0, 0] - p[1, 1]).item() / 2, rel=1e-5)
    assert generalized_ce(logits, one, torch.ones(2, 1), 1e-4).item() == pytest.approx(
        cross_entropy(logits, one, torch.ones(2, 1)).item(), rel=1e-3)
    # the gradient is CE's scaled by p_y^q: an unlikely (often wrong) label pulls less
    z = logits.clone().requires_grad_(True)
    generalized_ce(z, one, torch.ones(2, 1), q, reduction="none")[1].backward()
    zc = logits.clone().requires_grad_(True)
    cross_entropy(zc, one, torch.ones(2, 1), reduction="none")[1].backward()
    assert torch.allclose(z.grad, zc.grad * p[1, 1] ** q, atol=1e-6)
    for bad in (0.0, 1.5):
        with pytest.raises(WeblyError, match="gce_q"):
            TrainConfig(loss="gce", gce_q=bad).validate()


def test_balanced_sampler_is_uniform_over_classes():
    from scipy.stats import chisquare

    labels = np.repeat(np.arange(5), [1000, 300, 100, 30, 10])  # long tail
    s = BalancedSampler(groups_from_labels(labels, 5), 20000, seed=1)
    drawn = labels[list(s)]
    counts = np.bincount(drawn, minlength=5)
    assert chisquare(counts).pvalue > 0.001  # consistent with uniform
    natural = BalancedSampler(groups_from_labels(labels, 5), 20000, balance=0.0, seed=1)
    share = np.bincount(labels[list(natural)], minlength=5) / 20000
    assert share[0] == pytest.approx(1000 / 1440, abs=0.02)


def test_ranks_draw_disjoint_parts_of_one_stream():
    labels = np.arange(100) % 7
    m = groups_from_labels(labels, 7)
    full = BalancedSampler(m, 600, seed=3).stream(2)
    parts = []
    for r in range(3):
        s = BalancedSampler(m, 600, seed=3, rank=r, world_size=3)
        s.set_epoch(2)
        parts.append(list(s))
    assert [len(p) for p in parts] == [200, 200, 200]
    interleaved = np.empty(600, np.int64)
    for r in range(3):
        interleaved[r::3] = parts[r]
    assert np.array_equal(interleaved, full)  # disjoint positions of the same seeded stream
    s = BalancedSampler(m, 600, seed=3)
    s.set_epoch(2, start=450)
    assert list(s) == full[450:].tolist()  # resume skips what was consumed
    assert not np.array_equal(BalancedSampler(m, 600, seed=3).stream(3), full)


def test_multilabel_balanced_and_shuffle():
    kw = sp.csr_matrix(np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]], np.uint8))
    s = BalancedSampler(sp.csc_matrix(kw), 3000, seed=0)
    drawn = np.asarray(list(s))
    assert (drawn == 2).mean() > 0.3  # the only image with keyword 1: drawn for a third
    sh = ShuffleSampler(10, seed=0, world_size=3)
    assert len(sh) == 4 and sorted(sh.stream(0)[:10].tolist()) == list(range(10))
    long = ShuffleSampler(10, 25, seed=0)  # more samples than images: further permutations
    assert len(long) == 25 and np.bincount(long.stream(0), minlength=10).min() >= 2


def test_empty_classes():
    labels = np.array([0, 0, 2])
    with pytest.warns(UserWarning, match="1 of 3 classes have no images"):
        s = BalancedSampler(groups_from_labels(labels, 3), 10)
    assert 1 not in labels[list(s)]
    with pytest.raises(WeblyError, match="every class is empty"):
        BalancedSampler(groups_from_labels(np.array([-1, -1]), 2), 10)


def test_batch_must_divide_over_ranks():
    assert per_rank_batch(256, 8) == 32
    with pytest.raises(WeblyError, match="does not divide over 3 ranks"):
        per_rank_batch(256, 3)


def test_sparse_targets_keep_largest_weights_and_batches_pad_to_their_longest_row():
    from webly.training.trainsets import collate, sparse_targets

    t = sp.csr_matrix(np.array([[0.2, 0.9, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]],
                               np.float32))
    st = sparse_targets(t, max_targets=2)
    assert st.indptr.tolist() == [0, 2, 2, 3] and st.ids.dtype == np.int32
    assert [st.row(i)[0].tolist() for i in range(3)] == [[1, 2], [], [1]]
    assert st.row(0)[1].tolist() == pytest.approx([0.9, 0.5])
    img = torch.zeros(3, 2, 2, dtype=torch.uint8)
    _, ids, ws, bad, reasons, pos = collate([(img, *st.row(i), -1, "", i) for i in (2, 1)])
    assert ids.tolist() == [[1], [-1]] and ws.tolist() == [[1.0], [0.0]]  # T = 1 in this batch
    _, ids, ws, _, _, _ = collate([(img, *st.row(i), -1, "", i) for i in range(3)])
    assert ids.tolist() == [[1, 2], [-1, -1], [1, -1]]
    assert bad.tolist() == [-1, -1] and reasons == ["", ""] and pos.tolist() == [2, 1]


def test_balanced_epoch_hits_its_targets_and_spreads_repeats():
    """A long tail (1 to 3,000 images a class): per-class draws match the target within 5%
    where >= 1,000 are expected, and an image never returns within 1,000 draws unless its share
    (with the sampler's jitter margin) forces it."""
    rng = np.random.default_rng(0)
    sizes = np.unique(np.round(np.exp(rng.uniform(0, np.log(3000), 400))).astype(int))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    D = 400_000
    for balance in (1.0, 0.5):
        s = BalancedSampler(groups_from_labels(labels, len(sizes)), D, balance=balance, seed=2)
        stream = s.stream(0)
        got = np.bincount(labels[stream], minlength=len(sizes))
        target = s.p * D
        big = target >= 1000
        assert big.any() and (np.abs(got[big] - target[big]) <= 0.05 * target[big]).all()
        order = np.argsort(stream, kind="stable")
        img, pos = stream[order], order
        same = img[1:] == img[:-1]
        gaps = (pos[1:] - pos[:-1])[same]
        spacing = D / np.bincount(stream, minlength=len(labels))[img[1:][same]]
        assert (gaps[spacing >= 1000 / (1 - JITTER) * 1.05] >= 1000).all()
        assert np.median(gaps / spacing) > 0.95  # evenly spread, not only past the 1,000 mark


def test_mixup_blends_images_and_targets():
    from webly.training.tasks import Batch, Mixup, Task

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.randn(6, 3, 2, 2)
    ids = torch.tensor([[0], [1], [2], [0], [1], [2]])
    w = torch.ones(6, 1)
    plain = Task(lambda lg, i, ww: cross_entropy(lg, i, ww))
    mix = Mixup(plain.criterion, alpha=1.0)
    torch.manual_seed(3)
    got = mix.loss(net, Batch(x, ids, w))
    torch.manual_seed(3)  # the same draws by hand: lam, then the permutation
    lam = float(torch.distributions.Beta(torch.tensor(1.0), torch.tensor(1.0)).sample())
    perm = torch.randperm(6)
    logits = net(lam * x + (1 - lam) * x[perm])
    want = lam * cross_entropy(logits, ids, w) + (1 - lam) * cross_entropy(logits, ids[perm], w)
    assert 0 < lam < 1 and torch.allclose(got, want)
    assert not torch.allclose(got, plain.loss(net, Batch(x, ids, w)))


def test_small_loss_selection_leaves_out_the_largest_losses_after_its_ramp():
    from webly.training.tasks import Batch, Task

    logits = torch.tensor([[4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0],
                           [0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]])
    ids = torch.zeros(8, 1, dtype=torch.long)  # label 0: the last rows have the largest losses
    w = torch.ones(8, 1)
    per = cross_entropy(logits, ids, w, reduction="none")
    task = Task(lambda lg, i, ww: cross_entropy(lg, i, ww, reduction="none"),
                drop_high_loss=0.25, ramp_epochs=2.0)
    net = torch.nn.Identity()
    assert [task.drop_rate(e) for e in (0.0, 1.0, 2.0, 5.0)] == [0.0, 0.125, 0.25, 0.25]
    assert torch.allclose(task.loss(net, Batch(logits, ids, w, epoch=0.0)), per.mean())
    assert torch.allclose(task.loss(net, Batch(logits, ids, w, epoch=1.0)), per[:7].mean())
    assert torch.allclose(task.loss(net, Batch(logits, ids, w, epoch=3.0)), per[:6].mean())
    assert Task(task.criterion, 0.25, ramp_epochs=0).drop_rate(0.0) == 0.25  # no ramp
    for bad in (dict(drop_high_loss=1.0), dict(drop_high_loss=-0.1),
                dict(drop_high_loss=0.2, drop_ramp_epochs=-1)):
        with pytest.raises(WeblyError, match="drop_high_loss"):
            TrainConfig(**bad).validate()


def test_elr_adds_the_pull_towards_each_images_running_average():
    from webly.training.tasks import Batch, EarlyLearning, make_task

    ce = lambda lg, i, ww: cross_entropy(lg, i, ww, reduction="none")  # noqa: E731
    task = EarlyLearning(ce, n_samples=5, num_classes=3, lam=3.0, beta=0.7)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    ids, w, pos = torch.tensor([[0], [2]]), torch.ones(2, 1), torch.tensor([4, 1])
    p = torch.softmax(logits, 1)
    batch = Batch(logits, ids, w, positions=pos)
    first = task.loss(torch.nn.Identity(), batch)  # targets start at 0: t = 0.3 p
    want = (cross_entropy(logits, ids, w, reduction="none")
            + 3.0 * torch.log(1 - 0.3 * (p * p).sum(1))).mean()
    assert torch.allclose(first, want, atol=1e-5)
    task.loss(torch.nn.Identity(), batch)  # t = 0.7 * 0.3 p + 0.3 p
    assert torch.allclose(task.targets[pos], 0.51 * p, atol=1e-5)
    assert task.targets[[0, 2, 3]].abs().sum() == 0  # images not drawn keep no target
    other = EarlyLearning(ce, 5, 3, lam=3.0)
    other.load_state_dict(task.state_dict())
    assert torch.equal(other.targets, task.targets)
    with pytest.raises(WeblyError, match="do not fit"):
        EarlyLearning(ce, 4, 3, lam=1.0).load_state_dict(task.state_dict())
    with pytest.raises(WeblyError, match="positions"):
        task.loss(torch.nn.Identity(), Batch(logits, ids, w))
    with pytest.raises(WeblyError, match="small class counts"):
        EarlyLearning(ce, 16_000_000, 5000, lam=1.0)
    with pytest.raises(WeblyError, match="elr and mixup"):
        make_task(TrainConfig(elr=1.0, mixup=0.2), "finetune", 5, 3)
    for bad in (dict(elr=-1.0), dict(elr=1.0, elr_beta=1.0)):
        with pytest.raises(WeblyError, match="elr"):
            TrainConfig(**bad).validate()


def test_pad_crop_keeps_size_and_shifts_by_at_most_an_eighth():
    from webly.data.images import PadCropTransform

    torch.manual_seed(0)
    img = torch.arange(3 * 32 * 32, dtype=torch.int64).reshape(3, 32, 32).remainder(251).to(
        torch.uint8)
    outs = [PadCropTransform(32)(img) for _ in range(50)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.uint8 for o in outs)
    assert any(torch.equal(o, img) or torch.equal(o, img.flip(-1)) for o in outs)
    assert len({o.sum().item() for o in outs}) > 5  # crops move
    assert PadCropTransform(32)(torch.zeros(3, 40, 40, dtype=torch.uint8)).shape == (3, 32, 32)
    # every output is a crop of the reflect-padded image (torch's pad as the oracle), maybe flipped
    for size in (8, 20):
        x = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
        p = size // 8
        padded = torch.nn.functional.pad(x[None].float(), (p, p, p, p), mode="reflect")[0]
        crops = [padded[:, t:t + size, c:c + size].to(torch.uint8) for t in range(2 * p + 1)
                 for c in range(2 * p + 1)]
        crops += [c.flip(-1) for c in crops]
        seen = set()
        for _ in range(1000):
            out = PadCropTransform(size)(x)
            hit = [i for i, c in enumerate(crops) if torch.equal(out, c)]
            assert hit
            seen.add(hit[0])
        assert len(seen) == len(crops)  # every offset and both flips occur


def test_batched_pad_crop_gives_every_crop_and_flip_of_the_reflect_padded_image():
    from webly.data.images import pad_crop_batch

    size, p = 8, 1
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=g)
    padded = torch.nn.functional.pad(x.float(), (p, p, p, p), mode="reflect")[0]
    crops = [padded[:, t:t + size, c:c + size].to(torch.uint8) for t in range(2 * p + 1)
             for c in range(2 * p + 1)]
    crops += [c.flip(-1) for c in crops]
    out = pad_crop_batch(x.expand(400, -1, -1, -1), torch.Generator().manual_seed(0))
    hits = [[i for i, c in enumerate(crops) if torch.equal(o, c)] for o in out]
    assert all(hits) and len({h[0] for h in hits}) == len(crops)
    many = torch.randint(0, 256, (5, 3, size, size), dtype=torch.uint8, generator=g)  # own crops
    for o, img in zip(pad_crop_batch(many, g), many, strict=True):
        pad = torch.nn.functional.pad(img[None].float(), (p, p, p, p), mode="reflect")[0]
        assert any(torch.equal(o, c) or torch.equal(o, c.flip(-1)) for c in (
            pad[:, t:t + size, c:c + size].to(torch.uint8) for t in range(3) for c in range(3)))


def test_strong_view_changes_colour_and_cuts_out_a_grey_square_deterministically():
    from webly.data.images import strong_augment_batch

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=g)
    a = strong_augment_batch(x, torch.Generator().manual_seed(5))
    b = strong_augment_batch(x, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert (a != x).float().mean() > 0.5  # colours move
    # black images stay black under every colour change, so the grey cutout is all that shows
    black = strong_augment_batch(torch.zeros(64, 3, 16, 16, dtype=torch.uint8),
                                 torch.Generator().manual_seed(5))
    cut = (black == 128).all(1)  # [N, S, S]
    assert ((black == 0) | (black == 128)).all() and torch.equal(cut, (black == 128).any(1))
    for m in cut:  # one axis-aligned square of side S/2, cut where it leaves the image
        r, c = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert 1 <= len(r) <= 8 and 1 <= len(c) <= 8
        assert m[r.min():r.max() + 1, c.min():c.max() + 1].all() and m.sum() == len(r) * len(c)
        assert len(r) == 8 or r.min() == 0 or r.max() == 15  # smaller only at an edge
    assert (cut.flatten(1).sum(1) == 64).any()  # whole squares occur


def test_consistency_adds_the_masked_loss_of_the_strong_view_and_draws_by_step():
    from webly.training.tasks import Batch, Consistency, Task, make_task

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    ce = lambda lg, i, ww: cross_entropy(lg, i, ww, reduction="none")  # noqa: E731
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    x, ids, w = torch.randn(4, 3, 8, 8), torch.tensor([[0], [1], [2], [0]]), torch.ones(4, 1)
    plain = Task(ce).loss(net, Batch(x, ids, w))
    never = Consistency(ce, images, weight=1.0, ratio=2.0, threshold=1.01, seed=0)
    assert torch.allclose(never.loss(net, Batch(x, ids, w)), plain)  # no confident prediction
    assert never.metrics() == {"unlabeled_confident": 0.0}
    every = Consistency(ce, images, weight=2.0, ratio=2.0, threshold=0.0, seed=0)
    got = every.loss(net, Batch(x, ids, w, micro_step=7))
    assert every.metrics() == {"unlabeled_confident": 1.0}
    # by hand: the same draws (seed, rank 0, step 7), the weak view's argmax as the target
    from webly.data.images import normalize_batch, pad_crop_batch, strong_augment_batch

    g = torch.Generator().manual_seed(0 * 1_000_000_007 + 7)
    u = images[torch.randint(0, 20, (8,), generator=g)]
    weak = pad_crop_batch(u, g)
    strong = strong_augment_batch(weak, g)
    target = net(normalize_batch(weak)).argmax(1)
    want = plain + 2.0 * torch.nn.functional.cross_entropy(net(normalize_batch(strong)), target)
    assert torch.allclose(got, want, atol=1e-5)
    again = every.loss(net, Batch(x, ids, w, micro_step=7))
    assert torch.equal(got, again)  # a pure function of the step: a resumed run draws the same
    assert not torch.equal(got, every.loss(net, Batch(x, ids, w, micro_step=8)))
    with pytest.raises(WeblyError, match="every training image has a label"):
        Consistency(ce, images[:0], 1.0, 1.0, 0.95, 0)
    with pytest.raises(WeblyError, match="without elr or mixup"):
        make_task(TrainConfig(unlabeled_weight=1.0, mixup=0.2), "finetune", unlabeled=images)
    with pytest.raises(WeblyError, match="without elr or mixup"):
        make_task(TrainConfig(unlabeled_weight=1.0), "pretrain_wt", unlabeled=images)
    for bad in (dict(unlabeled_weight=-1.0), dict(unlabeled_ratio=0.0),
                dict(unlabeled_threshold=1.5),
                dict(unlabeled_weight=1.0, augment="pad_crop"),  # not in memory
                dict(unlabeled_weight=1.0, in_memory=True)):  # resized-crop augmentation
        with pytest.raises(WeblyError, match="unlabeled"):
            TrainConfig(**bad).validate()
