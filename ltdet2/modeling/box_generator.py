"""Dense jittered boxes around ground-truth boxes (LOCE's model-agnostic box generator, BACL's FHM)."""

import torch

# Row k is the sign pattern of the offsets on (x1, y1, x2, y2): bit j of k set -> minus on coordinate j.
_SIGN_PATTERNS = 1.0 - 2.0 * ((torch.arange(16)[:, None] >> torch.arange(4)[None, :]) & 1).float()


_SIGNS_ON_DEVICE = {}  # (device, dtype) -> _SIGN_PATTERNS there: copied once, not at every call


def _sign_patterns(device, dtype):
    key = (str(device), dtype)
    if key not in _SIGNS_ON_DEVICE:
        _SIGNS_ON_DEVICE[key] = _SIGN_PATTERNS.to(device=device, dtype=dtype)
    return _SIGNS_ON_DEVICE[key]


def dense_boxes(gt_boxes, image_size, generator=None, *, shared_eta=False):
    """16 boxes per ground-truth box, one per sign pattern of the offsets on (x1, y1, x2, y2).

    Box i, pattern k is ``b_i + sign_k * (eta * w/6, eta * h/6, eta * w/6, eta * h/6)`` with an
    independent ``eta ~ U(0, 1)`` per coordinate (LOCE eq. 5, BACL Eq. 10), clipped to the image as
    Detectron2's ``Boxes.clip`` does, to ``[0, W] x [0, H]`` (the official LOCE and BACL code, MMDetection's
    convention, clip to ``W - 1`` and ``H - 1``).

    Args:
        gt_boxes (Tensor): [G, 4] boxes (x1, y1, x2, y2) in absolute pixels.
        image_size (tuple[int, int]): (height, width) of the image the boxes live in.
        generator (torch.Generator, optional): source of the magnitudes (on ``gt_boxes.device``).
        shared_eta (bool): False (the papers): magnitudes drawn per box, pattern and coordinate.
            True (LOCE's and BACL's official code): one [16, 4] draw shared by all the boxes of the image.

    Returns:
        Tensor: [G * 16, 4] boxes, ordered box by box (rows 16*i .. 16*i+15 come from box i).
    """
    return dense_boxes_per_image([gt_boxes], [image_size], generator, shared_eta=shared_eta)[0]


def dense_boxes_per_image(gt_boxes, image_sizes, generator=None, *, shared_eta=False):
    """:func:`dense_boxes` of every image of a batch in one pass (no per-image kernels): ``gt_boxes`` a list of
    [G_i, 4] tensors on one device, ``image_sizes`` their images' (height, width). The magnitudes are drawn
    at once, ``[sum G_i, 16, 4]`` (``shared_eta``: ``[num_images, 16, 4]``, one draw per image); one image
    gives exactly :func:`dense_boxes`' boxes. Returns a list of [G_i * 16, 4] tensors (views of one)."""
    if len(gt_boxes) != len(image_sizes):
        raise ValueError(f"dense_boxes_per_image: {len(gt_boxes)} box tensors but {len(image_sizes)} image sizes")
    if not gt_boxes:
        return []
    counts = [int(b.numel()) // 4 for b in gt_boxes]
    boxes = torch.cat([b.reshape(-1, 4) for b in gt_boxes])
    device, dtype = boxes.device, boxes.dtype
    # (width, height, width, height, image) of every box, built on the host and copied once
    per_image = torch.tensor([[w, h, w, h, i] for i, (h, w) in enumerate(image_sizes)], dtype=torch.float32)
    per_box = per_image.repeat_interleave(torch.tensor(counts), dim=0).to(device)
    limits = per_box[:, :4].to(dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    max_offsets = torch.stack([widths, heights, widths, heights], dim=1) / 6.0  # [G, 4]
    if shared_eta:
        eta = torch.rand((len(counts), 16, 4), generator=generator, device=device, dtype=dtype)
        eta = eta[per_box[:, 4].long()]
    else:
        eta = torch.rand((boxes.shape[0], 16, 4), generator=generator, device=device, dtype=dtype)
    dense = boxes[:, None, :] + _sign_patterns(device, dtype)[None] * eta * max_offsets[:, None, :]
    dense = torch.minimum(dense.clamp(min=0), limits[:, None, :])
    return list(dense.reshape(-1, 4).split([16 * c for c in counts]))
