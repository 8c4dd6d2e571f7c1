"""Cross-entropy training (teacher forcing) on (image, caption) pairs: both models' first stage."""

from __future__ import annotations

from typing import Iterator

import torch

from captioner.training.objective import Objective, Step


def noam_factor(step: int, d_model: int, warmup: int) -> float:
    """The M² reference's warm-up schedule: d^-0.5 * min(s^-0.5, s * w^-1.5), s counted from 1."""
    step = max(step, 1)
    return d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


class CrossEntropy(Objective):
    def batches(self, generator: torch.Generator) -> Iterator[list]:
        """Batches of (image, caption) pairs in a seeded random order; the last partial batch is dropped.

        ``shuffled_pairs``: ``batch_size`` pairs drawn from all of them. ``by_image``: images in random order, each
        with all its captions, batch_size / (mean captions per image) images per batch; every pair is still seen
        once an epoch, and each image is encoded once for all its captions."""
        images = self.data.images
        bs = int(self.hp["batch_size"])
        if self.hp["xe_batches"] == "by_image":
            order = torch.randperm(len(images), generator=generator).tolist()
            mean_captions = sum(len(image["captions"]) for image in images) / len(images)
            per_batch = min(max(1, round(bs / mean_captions)), len(order))
            for start in range(0, len(order) - per_batch + 1, per_batch):
                chosen = order[start:start + per_batch]
                yield [(i, j) for i in chosen for j in range(len(images[i]["captions"]))]
            return
        pairs = [(i, j) for i, image in enumerate(images) for j in range(len(image["captions"]))]
        order = torch.randperm(len(pairs), generator=generator).tolist()
        bs = min(bs, len(order))
        for start in range(0, len(order) - bs + 1, bs):
            yield [pairs[k] for k in order[start:start + bs]]

    def images_of(self, items: list) -> list[int]:
        return list(dict.fromkeys(i for i, _ in items))  # each distinct image once, in order of appearance

    def forward(self, items: list) -> Step:
        # each distinct image is read and encoded once; image_index sends its encoding to its captions
        images = self.images_of(items)
        row = {image: r for r, image in enumerate(images)}
        inputs = self.data.inputs(images)
        inputs["image_index"] = torch.tensor([row[i] for i, _ in items], device=self.data.device)
        captions = self.data.pad([self.data.images[i]["captions"][j] for i, j in items])
        return self.step(self.loss(captions, inputs), len(items))

    def loss(self, captions: torch.Tensor, inputs: dict):
        return self.model.loss(captions=captions, **inputs)

    def step(self, out, captions: int) -> Step:
        tokens = float(out.tokens)  # a device -> host sync, once per step
        count = tokens if self.model.loss_normalisation == "token" else float(captions)
        return Step(out.loss.float(), count, {"nll_per_token": (float(out.nll_per_token) * tokens, tokens)})

    def learning_rate(self, step: int) -> float | None:
        if not self.hp.get("warmup"):
            return None
        return float(self.hp["lr"]) * noam_factor(step + 1, self.model.config.d_model, int(self.hp["warmup"]))


OBJECTIVE = CrossEntropy
