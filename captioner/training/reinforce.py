"""Hard attention (Xu et al. 2015, Sec. 4.1): the cross-entropy of captions decoded with a *sampled* attention
location per step, plus REINFORCE on those samples with the paper's moving-average baseline and entropy bonus.

As in the paper, a share ``expected_context_p`` of the batches trains on the expected context instead (the soft
model's deterministic approximation); the authors' code scales the REINFORCE term by ``reinforce_scale`` (1/10).
Under data parallelism the draw and the baseline's mean are those of the global batch.
"""

from __future__ import annotations

import torch

from captioner.training import distributed
from captioner.training.xe import CrossEntropy


class HardAttention(CrossEntropy):
    def __init__(self, model, data, hp):
        super().__init__(model, data, hp)
        self.register_buffer("baseline", torch.zeros(()))  # b <- decay * b + (1 - decay) * mean log p(y|s,a)
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))

    def loss(self, captions: torch.Tensor, inputs: dict):
        # rank 0's draw decides for every process: a global batch is sampled or expected as a whole
        sample = bool(distributed.broadcast_from_main(torch.rand(())) >= float(self.hp["expected_context_p"]))
        out = self.model.loss(captions=captions, sample=sample, **inputs)
        if not sample:
            return out
        reward = out.extras["sentence_logp"].detach()
        mean_reward = distributed.global_mean(reward)  # of the global batch: the baseline stays equal everywhere
        if not self.baseline_ready:  # start the average at the first reward, not at 0
            self.baseline.fill_(mean_reward)
            self.baseline_ready.fill_(True)
        advantage = reward - self.baseline
        out.loss = (out.loss - float(self.hp["reinforce_scale"]) * (advantage * out.extras["log_p_s"]).mean()
                    - float(self.hp["entropy_weight"]) * out.extras["entropy"].mean())
        with torch.no_grad():
            decay = float(self.hp["baseline_decay"])
            self.baseline.mul_(decay).add_((1 - decay) * mean_reward)
        return out


OBJECTIVE = HardAttention
