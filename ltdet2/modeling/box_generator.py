"""Dense jittered boxes around ground-truth boxes (LOCE's model-agnostic box generator, BACL's FHM)."""

import torch

# Row k is the sign pattern of the offsets on (x1, y1, x2, y2): bit j of k set -> minus on coordinate j.
_SIGN_PATTERNS = 1.0 - 2.0 * ((torch.arange(16)[:, None] >> torch.arange(4)[None, :]) & 1).float()


def dense_boxes(gt_boxes, image_size, generator=None, *, shared_eta=False):
    """16 boxes per ground-truth box, one per sign pattern of the offsets on (x1, y1, x2, y2).

    Box i, pattern k is ``b_i + sign_k * (eta * w/6, eta * h/6, eta * w/6, eta * h/6)`` with an
    independent ``eta ~ U(0, 1)`` per coordinate (LOCE eq. 5, BACL Eq. 10), clipped to the image.

    Args:
        gt_boxes (Tensor): [G, 4] boxes (x1, y1, x2, y2) in absolute pixels.
        image_size (tuple[int, int]): (height, width) of the image the boxes live in.
        generator (torch.Generator, optional): source of the magnitudes (on ``gt_boxes.device``).
        shared_eta (bool): False (the papers): magnitudes drawn per box, pattern and coordinate.
            True (BACL's official code): one [16, 4] draw shared by all the boxes of the call (call it
            once per image for the official per-image draw).

    Returns:
        Tensor: [G * 16, 4] boxes, ordered box by box (rows 16*i .. 16*i+15 come from box i).
    """
    gt_boxes = gt_boxes.reshape(-1, 4)
    num_boxes = gt_boxes.shape[0]
    widths = gt_boxes[:, 2] - gt_boxes[:, 0]
    heights = gt_boxes[:, 3] - gt_boxes[:, 1]
    max_offsets = torch.stack([widths, heights, widths, heights], dim=1) / 6.0  # [G, 4]
    eta_shape = (1, 16, 4) if shared_eta else (num_boxes, 16, 4)
    eta = torch.rand(eta_shape, generator=generator, device=gt_boxes.device, dtype=gt_boxes.dtype)
    signs = _SIGN_PATTERNS.to(device=gt_boxes.device, dtype=gt_boxes.dtype)
    boxes = gt_boxes[:, None, :] + signs[None] * eta * max_offsets[:, None, :]
    height, width = image_size
    boxes[..., 0::2] = boxes[..., 0::2].clamp(min=0, max=width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(min=0, max=height)
    return boxes.reshape(num_boxes * 16, 4)
