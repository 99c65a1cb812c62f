"""LST's meta weight generator (Eq. 3, Gidaris & Komodakis' attention design), its episodic training term over a
DistillationContext and the phase-end step that writes the generated weights into the classifier."""

import os

import pytest
import torch
import torch.nn.functional as F
from test_distillation import _context

from ltdet2.modeling.weight_generator import MetaWeightGenerator

D, B = 8, 5


@pytest.fixture
def generator():
    torch.manual_seed(0)
    g = MetaWeightGenerator(D, B)
    with torch.no_grad():  # gains away from their init of 1, so that a and b are tested
        g.feature_gain.copy_(torch.linspace(0.5, 1.5, D))
        g.attention_gain.copy_(torch.linspace(2.0, 0.2, D))
    return g


def test_init_and_attention_sums_to_one(generator):
    torch.manual_seed(1)
    g = MetaWeightGenerator(D, B)
    assert torch.allclose(g.query.weight, torch.eye(D), atol=0.005) and not torch.equal(g.query.weight, torch.eye(D))
    assert torch.equal(g.query.bias, torch.zeros(D))
    assert float(g.attention_scale) == 10.0 and isinstance(g.attention_scale, torch.nn.Parameter)
    assert torch.equal(g.feature_gain, torch.ones(D)) and torch.equal(g.attention_gain, torch.ones(D))
    m = generator.attention(torch.randn(7, D))
    assert m.shape == (7, B) and (m > 0).all()
    assert torch.allclose(m.sum(1), torch.ones(7), atol=1e-6)


def test_eq3_against_manual_computation(generator):
    torch.manual_seed(2)
    x, wb = torch.randn(4, D), torch.randn(B, D)
    got = generator(x, wb)
    for n in range(4):  # one RoI at a time, written out
        xn = x[n] / x[n].norm()
        q = generator.query.weight @ xn + generator.query.bias
        cos = torch.stack([q @ k / (q.norm() * k.norm()) for k in generator.keys])
        m = torch.exp(10.0 * cos) / torch.exp(10.0 * cos).sum()
        attended = sum(m[j] * wb[j] / wb[j].norm() for j in range(B))
        expected = generator.feature_gain * xn + generator.attention_gain * attended
        assert torch.allclose(got[n], expected, atol=1e-5), n


def test_class_average():
    w = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 7.0]])
    mean, counts = MetaWeightGenerator.class_average(w, torch.tensor([2, 0, 2, 2]), 4)
    assert counts.tolist() == [1, 0, 3, 0]
    assert torch.equal(mean, torch.tensor([[3.0, 2.0], [0.0, 0.0], [13 / 3, 11 / 3], [0.0, 0.0]]))


def test_bad_shapes(generator):
    with pytest.raises(ValueError, match=r"features must be \[N, 8\], got \[3, 7\]"):
        generator.attention(torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"base_weights must be \[5, 8\].*got \[4, 8\]"):
        generator(torch.randn(3, D), torch.randn(4, D))


def test_gradients_reach_every_parameter(generator):
    x = torch.randn(6, D, requires_grad=True)
    wb = torch.randn(B, D, requires_grad=True)
    F.mse_loss(generator(x, wb), torch.randn(6, D)).backward()
    for name, p in [*generator.named_parameters(), ("x", x), ("base", wb)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --- the episodic training term and the phase-end step --------------------------------------------------------
BASE, OLD = 2, 3  # of NUM_CLASSES = 6: classes 3, 4, 5 are new


def _model_with_term(**term_options):
    """A TeacherStudentRCNN with a cosine classifier and the term, its own teacher."""
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    from ltdet2.modeling import CosineClassifier, TeacherStudentRCNN
    from ltdet2.modeling.meta_weight_term import MetaWeightGeneratorTerm

    from fixtures.models import NUM_CLASSES, TEST_DEVICE, long_tail_cfg, small_model_cfg

    cfg = long_tail_cfg(small_model_cfg())
    cfg.roi_heads.box_predictor.classifier = L(CosineClassifier)(input_dim=256, num_classes=NUM_CLASSES, scale=10.0)
    cfg._target_ = TeacherStudentRCNN
    cfg.distillers = [
        L(MetaWeightGeneratorTerm)(
            num_base_classes=BASE, num_old_classes=OLD, num_classes=NUM_CLASSES, feature_dim=256, **term_options
        )
    ]
    torch.manual_seed(0)
    model = instantiate(cfg).to(TEST_DEVICE)
    object.__setattr__(model, "_teacher", model)  # the term never reads the teacher: no checkpoint needed
    return model


def _batch(seed):
    from fixtures.models import make_batch

    batch = make_batch(num_images=2, seed=seed, boxes_per_image=6)
    for x in batch:  # each image's first new-class box is ignored (as a replayed image's other classes)
        new = x["instances"].gt_classes >= OLD
        x["instances"].gt_valid = ~(new & (new.cumsum(0) == 1))
    return batch


def test_term_loss_against_a_direct_computation_and_its_gradients():
    model = _model_with_term(weight=0.5)
    term = model.distillers[0]
    batch = _batch(seed=3)
    context = _context(model, batch)
    loss = term(context)["loss_meta_weights"]

    heads, classifier = model.roi_heads, model.roi_heads.box_predictor.cls_score
    W = classifier.weight

    def features(boxes, images=slice(None)):
        maps = [context.student_features[f][images] for f in heads.box_in_features]
        return heads.box_head(heads.box_pooler(maps, boxes))

    rows = list(W[:OLD])
    support = []
    for i, x in enumerate(batch):  # one image at a time
        t = x["instances"]
        keep = (t.gt_classes >= OLD) & t.gt_valid
        support.append((features([t.gt_boxes[keep]], slice(i, i + 1)), t.gt_classes[keep]))
    feats, classes = torch.cat([f for f, _ in support]), torch.cat([c for _, c in support])
    assert sorted(set(classes.tolist())) == [3, 4] and len(classes) < sum(
        int((x["instances"].gt_classes >= OLD).sum()) for x in batch
    )  # an invalid new-class box left out; class 5 not in the support
    w = term.generator(feats, W[:BASE])
    for c in range(OLD, 6):  # class 5: its own row (no EMA yet)
        rows.append(w[classes == c].mean(0) if (classes == c).any() else W[c])
    rows.append(W[6])
    query = features([p.proposal_boxes for p in context.sampled_proposals])
    logits = torch.stack([classifier.scale * F.cosine_similarity(query, r[None], dim=1) for r in rows], 1)
    targets = torch.cat([p.gt_classes for p in context.sampled_proposals])
    assert (targets == 6).any() and (targets < 6).any()
    expected = 0.5 * F.cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    model.zero_grad()
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {f"distillers.0.generator.{n}" for n, _ in term.generator.named_parameters()} <= grads
    assert {"roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.scale"} <= grads
    assert any(n.startswith("roi_heads.box_head.") for n in grads) and any(n.startswith("backbone.") for n in grads)
    assert not any(n.startswith(("proposal_generator.", "roi_heads.box_predictor.bbox_pred")) for n in grads)


def test_episode_weights_ema_for_absent_classes_and_in_the_state_dict():
    torch.manual_seed(4)
    model = _model_with_term(ema_momentum=0.75)
    term = model.distillers[0]
    assert torch.equal(term.ema_weights, torch.zeros(3, 256)) and not term.ema_seen.any()
    W = torch.randn(7, 256)
    f1, f2 = torch.randn(3, 256), torch.randn(2, 256)
    first = term.episode_weights(W, f1, torch.tensor([3, 3, 5]))
    gen1, _ = term.generate(f1, torch.tensor([3, 3, 5]), W)
    assert torch.equal(first[:3], W[:3]) and torch.equal(first[6], W[6])
    assert torch.allclose(first[3], gen1[0]) and torch.allclose(first[5], gen1[2])
    assert torch.equal(first[4], W[4])  # never generated: the classifier's own row
    assert term.ema_seen.tolist() == [True, False, True]
    second = term.episode_weights(W, f2, torch.tensor([4, 5]))
    gen2, _ = term.generate(f2, torch.tensor([4, 5]), W)
    assert torch.allclose(second[3], gen1[0])  # absent: its EMA
    assert torch.allclose(term.ema_weights[0], gen1[0]) and torch.allclose(term.ema_weights[1], gen2[1])
    assert torch.allclose(term.ema_weights[2], 0.75 * gen1[2] + 0.25 * gen2[2], atol=1e-6)
    assert term.ema_seen.all()

    state = model.state_dict()
    assert torch.equal(state["distillers.0.ema_weights"], term.ema_weights) and state["distillers.0.ema_seen"].all()
    fresh = _model_with_term(ema_momentum=0.75)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.distillers[0].ema_weights, term.ema_weights)
    term.eval()  # no update outside training
    before = term.ema_weights.clone()
    term.episode_weights(W, f2, torch.tensor([4, 5]))
    assert torch.equal(term.ema_weights, before)


def test_term_bad_settings():
    from ltdet2.modeling.meta_weight_term import MetaWeightGeneratorTerm

    with pytest.raises(ValueError, match="num_base_classes=4, num_old_classes=3, num_classes=6"):
        MetaWeightGeneratorTerm(num_base_classes=4, num_old_classes=3, num_classes=6)
    model = _model_with_term()
    model.distillers[0].num_classes = 7
    with pytest.raises(ValueError, match=r"classifier weight is \[7, 256\]; expected \[8, 256\]"):
        model.distillers[0].classifier(model)


def test_phase_end_write_changes_exactly_the_new_rows():
    from ltdet2.hooks.weight_generation import write_generated_weights

    model = _model_with_term()
    term = model.distillers[0]
    classifier = model.roi_heads.box_predictor.cls_score
    before = classifier.weight.detach().clone()
    scale = classifier.scale.detach().clone()
    batches = [_batch(seed=5), _batch(seed=6)]
    for x in batches[1]:  # no box of class 4 anywhere: its row stays
        t = x["instances"]
        t.gt_classes = torch.where(t.gt_classes == 4, torch.zeros_like(t.gt_classes), t.gt_classes)
    for x in batches[0]:
        t = x["instances"]
        t.gt_classes = torch.where(t.gt_classes == 4, torch.ones_like(t.gt_classes), t.gt_classes)
    model.train()
    counts = write_generated_weights(model, batches)
    assert model.training  # mode restored

    # direct: per-box generated weights of every valid new-class box of both batches, averaged per class
    model.eval()
    heads, feats, classes = model.roi_heads, [], []
    with torch.no_grad():
        for batch in batches:
            features = model.backbone(model.preprocess_image(batch).tensor)
            for i, x in enumerate(batch):
                t = x["instances"]
                keep = (t.gt_classes >= OLD) & t.gt_valid
                pooled = heads.box_pooler([features[f][i : i + 1] for f in heads.box_in_features], [t.gt_boxes[keep]])
                feats.append(heads.box_head(pooled))
                classes.append(t.gt_classes[keep])
        w = term.generator(torch.cat(feats), before[:BASE])
    classes = torch.cat(classes)
    assert counts.tolist() == [int((classes == c).sum()) for c in (3, 4, 5)] and counts[1] == 0 and counts.sum() > 2
    after = classifier.weight.detach()
    assert torch.equal(after[[0, 1, 2, 4, 6]], before[[0, 1, 2, 4, 6]]) and torch.equal(classifier.scale, scale)
    for c in (3, 5):
        mean = w[classes == c].mean(0)
        assert torch.allclose(after[c], mean * before[c].norm() / mean.norm(), atol=1e-6), c
        assert after[c].norm().item() == pytest.approx(before[c].norm().item(), rel=1e-5)

    write_generated_weights(model, batches, row_norm="generated")
    assert torch.allclose(classifier.weight[5].detach(), w[classes == 5].mean(0), atol=1e-6)
    with pytest.raises(KeyError, match="needs 'instances'"):
        write_generated_weights(model, [[{"image": batches[0][0]["image"]}]])


def test_a_second_write_generates_the_same_weights_but_keep_rounds_the_norm():
    """The generator reads the box features and the base rows, which the write leaves as they are: with
    row_norm="generated" a second write is bit-identical. "keep" rescales to the norm of the row it replaces,
    which the second write reads back rounded (a difference of an ulp or so): not bit-identical, which is why
    do_train records the write in model_final and does not write again on a resume."""
    from ltdet2.hooks.weight_generation import write_generated_weights

    model = _model_with_term()
    weight = model.roi_heads.box_predictor.cls_score.weight
    with torch.no_grad():  # rows of different norms
        weight.mul_(torch.linspace(0.2, 3.0, 7).unsqueeze(1))
    batches = [_batch(seed=5)]
    rows = {}
    for row_norm in ("generated", "keep"):
        write_generated_weights(model, batches, row_norm=row_norm)
        first = weight.detach().clone()
        write_generated_weights(model, batches, row_norm=row_norm)
        rows[row_norm] = (first, weight.detach().clone())
    first, second = rows["generated"]
    assert torch.equal(first, second)
    first, second = rows["keep"]
    assert torch.equal(first[[0, 1, 2, 6]], second[[0, 1, 2, 6]])
    assert torch.allclose(first, second, rtol=1e-6, atol=0)
    generated = rows["generated"][0][3:6]
    assert torch.allclose(F.normalize(first[3:6], dim=1), F.normalize(generated, dim=1), atol=1e-6)


def _phase_cfg(output_dir="output/tiny/phase_x", names="d"):
    from omegaconf import OmegaConf

    train = {"output_dir": output_dir, "max_iter": 4}
    return OmegaConf.create({"train": train, "dataloader": {"train": {"dataset": {"names": names}}}})


def test_phase_end_options_are_checked_before_training():
    from types import SimpleNamespace

    from ltdet2.hooks.weight_generation import WriteGeneratedWeights

    model = _model_with_term()
    assert WriteGeneratedWeights().options == {"row_norm": "keep", "batch_size": 4, "num_workers": 0}
    assert WriteGeneratedWeights(row_norm="generated").options["row_norm"] == "generated"
    with pytest.raises(TypeError, match="batchsize"):
        WriteGeneratedWeights(batchsize=2)
    with pytest.raises(ValueError, match=r"WriteGeneratedWeights: row_norm must be one of"):
        WriteGeneratedWeights(row_norm="unit")
    hook = WriteGeneratedWeights()
    hook.trainer = SimpleNamespace(model=model, cfg=_phase_cfg())
    hook.before_train()  # the model holds the term, the phase trains on one dataset
    model.distillers = torch.nn.ModuleList()
    with pytest.raises(ValueError, match=r"phase in output/tiny/phase_x: the model \(TeacherStudentRCNN\) must hold "):
        hook.before_train()


def test_phase_end_write_is_not_repeated_on_a_resume_of_the_written_checkpoint():
    from ltdet2.hooks.weight_generation import CHECKPOINT_KEY, write_phase_end_weights

    class NoSave:
        checkpointables = {}

        def save_on_all_ranks(self, *args, **kwargs):
            raise AssertionError("saved again")

    model = _model_with_term()
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    record = {"counts": [3, 0, 2], "row_norm": "keep"}
    resumed = {CHECKPOINT_KEY: record, "iteration": 3}
    assert write_phase_end_weights(model, _phase_cfg(), NoSave(), {}, resumed=resumed) is record
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, before)


def _write_worker(rank, port, out_dir):
    import torch.distributed as dist

    from ltdet2.hooks.weight_generation import write_generated_weights

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = _model_with_term()  # seeded: the same weights on both ranks
        counts = write_generated_weights(model, [_batch(seed=5 + rank)])  # each rank its shard of the data
        weight = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
        torch.save({"counts": counts, "weight": weight}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed (gloo)")
def test_phase_end_write_over_two_processes_equals_one_process_over_all_the_data(tmp_path, monkeypatch):
    """The write is a collective: each rank sums its shard's generated weights, the sums and counts are added
    over the ranks, so every rank writes the rows one process writes from both shards."""
    import socket

    import torch.multiprocessing as mp

    from ltdet2.hooks.weight_generation import write_generated_weights

    from fixtures.models import TEST_DEVICE

    if TEST_DEVICE != "cpu":
        pytest.skip("gloo on CPU tensors")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_write_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    model = _model_with_term()
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    counts = write_generated_weights(model, [_batch(seed=5), _batch(seed=6)])
    expected = model.roi_heads.box_predictor.cls_score.weight.detach()
    for result in ranks:
        assert result["counts"].tolist() == counts.tolist() and counts.sum() > 2
        assert torch.equal(result["weight"][:OLD], before[:OLD])  # old rows untouched
        torch.testing.assert_close(result["weight"], expected, rtol=1e-5, atol=1e-6)  # sum order differs
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])  # every rank writes the same rows
