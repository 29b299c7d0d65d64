# smoothing_reference.py: PyTorch's label-smoothed cross-entropy and its gradient on fixed logits (the oracle of sbpc's --smoothing).
"""Write Tests/Fixtures/smoothing/: logits.npy f32 [4, 5], labels.npy i64 [4], and for
smoothing 0.1: loss.npy (F.cross_entropy(..., label_smoothing=0.1), mean) and grad.npy
(its gradient with respect to the logits).  Needs torch (models/requirements.txt)."""
import os

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Tests", "Fixtures", "smoothing")
os.makedirs(OUT, exist_ok=True)
logits = torch.tensor(((np.arange(20) * 0.73) % 3.1 - 1.4).reshape(4, 5), dtype=torch.float32, requires_grad=True)
labels = torch.tensor([2, 0, 4, 1])
loss = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
loss.backward()
np.save(os.path.join(OUT, "logits.npy"), logits.detach().numpy())
np.save(os.path.join(OUT, "labels.npy"), labels.numpy().astype(np.int64))
np.save(os.path.join(OUT, "loss.npy"), np.array([loss.item()], dtype=np.float32))
np.save(os.path.join(OUT, "grad.npy"), logits.grad.numpy())
print("wrote", OUT)

# Soft targets (--soft-targets with Mixup): timm's mixup_target at λ = 0.7 with smoothing 0.1
# (the batch mixed with its reverse), and timm's SoftTargetCrossEntropy of it.
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402,F401  (makes torchvision, hence timm, importable)
from timm.data.mixup import mixup_target  # noqa: E402
from timm.loss import SoftTargetCrossEntropy  # noqa: E402

soft = torch.tensor(logits.detach().numpy(), requires_grad=True)
targets = mixup_target(labels, 5, lam=0.7, smoothing=0.0)
soft_loss = SoftTargetCrossEntropy()(soft, mixup_target(labels, 5, lam=0.7, smoothing=0.1))
soft_loss.backward()
np.save(os.path.join(OUT, "targets.npy"), targets.numpy().astype(np.float32))
np.save(os.path.join(OUT, "soft_loss.npy"), np.array([soft_loss.item()], dtype=np.float32))
np.save(os.path.join(OUT, "soft_grad.npy"), soft.grad.numpy())
print("wrote the soft-target reference (λ 0.7, smoothing 0.1)")
