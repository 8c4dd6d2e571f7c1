"""Self-critical sequence training (Rennie et al. 2017, as the M² reference runs it): beam-search ``k`` captions
per image, reward each with CIDEr-D against the image's training references (document frequencies of the training
corpus), baseline = the mean reward of the image's beams, ascend the reward-weighted log-likelihood."""

from __future__ import annotations

from typing import Iterator

import torch

from captioner.data.karpathy import tokenize
from captioner.models.beam_search import beam_search
from captioner.training.cider import CiderD
from captioner.training.objective import Objective, Step


def scst_loss(token_logprobs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Self-critical loss over (images, beams, steps) log-probs: the baseline of each beam is the mean reward of
    its image's beams; log-probs are averaged over all steps (zeros after <eos> included), as the reference."""
    advantage = rewards - rewards.mean(dim=1, keepdim=True)
    return -(advantage * token_logprobs.mean(dim=-1)).mean()


class SelfCritical(Objective):
    epochs_key = "scst_epochs"
    validate_start = True  # the cross-entropy weights are the starting point and the bar to beat

    def __init__(self, model, data, hp):
        super().__init__(model, data, hp)
        self.refs = [[" ".join(tokenize(r)) for r in image["refs"]] for image in data.images]
        self.reward_cider = CiderD(self.refs)  # document frequencies of the *training* references

    def batches(self, generator: torch.Generator) -> Iterator[list]:
        order = torch.randperm(len(self.data.images), generator=generator).tolist()
        bs = int(self.hp["scst_batch_images"])
        for start in range(0, len(order), bs):
            yield order[start:start + bs]

    def images_of(self, items: list) -> list[int]:
        return list(items)

    def forward(self, items: list) -> Step:
        k, vocab = int(self.hp["scst_beam_size"]), self.data.vocab
        state, step = self.model.decoder(**self.data.inputs(self.images_of(items)))
        result = beam_search(state, step, len(items), k, int(self.hp["scst_max_length"]), vocab.bos_id,
                             vocab.eos_id, vocab.pad_id, n_best=k, stop_when_done=False)
        tokens = result.tokens.tolist()  # one device -> host copy for the whole batch
        hyps = [vocab.decode(tokens[b][beam]) for b in range(len(items)) for beam in range(k)]
        refs = [self.refs[i] for i in items for _ in range(k)]
        rewards = torch.tensor(self.reward_cider.score(hyps, refs), dtype=torch.float32,
                               device=result.token_logprobs.device).view(len(items), k)
        return Step(scst_loss(result.token_logprobs, rewards), float(len(items)),
                    {"reward": (float(rewards.sum()), rewards.numel())})

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=float(self.hp["scst_lr"]))


OBJECTIVE = SelfCritical
