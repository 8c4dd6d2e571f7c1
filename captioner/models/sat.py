"""Show, Attend and Tell (Xu et al., ICML 2015) over a grid of annotation vectors.

Follows the paper and the authors' code (arctic-captions) rather than the popular tutorial:
- initial LSTM state from tanh MLPs on the mean annotation vector;
- additive attention queried by h_{t-1}, optional deeper context projection;
- a *scalar* gate beta_t = sigmoid(f_beta(h_{t-1})) by default (vector gate optional);
- deep output layer p(y_t) ~ exp(L_o(E y_{t-1} + L_h h_t + L_z z_t));
- doubly stochastic regularisation lambda * sum_i (1 - sum_t alpha_ti)^2, summed over locations;
- soft attention (z_t = sum_i alpha_ti a_i) or hard attention trained with REINFORCE
  (moving-average baseline, entropy bonus, expected context on half of the batches).

Hard attention at test time uses the expected context, the paper's deterministic approximation
(sampling at test time would make decoding random).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from captioner import distributed


@dataclass
class SATConfig:
    vocab_size: int
    feature_dim: int = 2048  # D of the annotation vectors
    project_dim: int = 0  # >0: learned linear projection of the annotations to this size
    embed_dim: int = 512
    hidden_dim: int = 1800
    attention_dim: int = 512
    attention_layers: int = 1  # depth of the context projection in the attention MLP
    init_layers: int = 2  # depth of the init-state MLPs (ReLU hidden layers, tanh output)
    gate: str = "scalar"  # scalar | vector | none
    deep_output: bool = True
    dropout: float = 0.5
    attention: str = "soft"  # soft | hard
    doubly_stochastic: float = 1.0  # lambda
    entropy_weight: float = 0.002  # lambda_e (hard attention)
    reinforce_scale: float = 0.1  # hard: the authors' code scales the REINFORCE gradient by 1/10
    baseline_decay: float = 0.9  # b <- decay * b + (1 - decay) * log p(y|s,a)
    expected_context_p: float = 0.5  # hard: probability per batch of using the expected context
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        if self.gate not in ("scalar", "vector", "none"):
            raise ValueError(f"gate must be scalar, vector or none, not {self.gate!r}")
        if self.attention not in ("soft", "hard"):
            raise ValueError(f"attention must be soft or hard, not {self.attention!r}")


def _mlp(sizes: list[int], final: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        layers.append(nn.ReLU() if i < len(sizes) - 2 else final)
    return nn.Sequential(*layers)


class ShowAttendTell(nn.Module):
    loss_normalisation = "caption"  # loss() averages over captions (the trainer weighs data-parallel shards by it)

    def __init__(self, config: SATConfig):
        super().__init__()
        self.config = c = config
        d = c.project_dim or c.feature_dim
        self.project = nn.Linear(c.feature_dim, c.project_dim) if c.project_dim else nn.Identity()
        init_sizes = [d] + [c.hidden_dim] * max(c.init_layers - 1, 0) + [c.hidden_dim]
        self.init_h = _mlp(init_sizes, nn.Tanh())
        self.init_c = _mlp(init_sizes, nn.Tanh())
        att_sizes = [d] + [c.attention_dim] * c.attention_layers
        self.att_context = _mlp(att_sizes, nn.Identity())
        self.att_hidden = nn.Linear(c.hidden_dim, c.attention_dim, bias=False)
        self.att_score = nn.Linear(c.attention_dim, 1)
        self.gate = {"scalar": nn.Linear(c.hidden_dim, 1), "vector": nn.Linear(c.hidden_dim, d),
                     "none": None}[c.gate]
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.lstm = nn.LSTMCell(c.embed_dim + d, c.hidden_dim)
        self.dropout = nn.Dropout(c.dropout)
        if c.deep_output:
            self.out_hidden = nn.Linear(c.hidden_dim, c.embed_dim)
            self.out_context = nn.Linear(d, c.embed_dim)
            self.out_vocab = nn.Linear(c.embed_dim, c.vocab_size)
        else:
            self.out_vocab = nn.Linear(c.hidden_dim, c.vocab_size)
        self.register_buffer("reinforce_baseline", torch.zeros(()))
        self.register_buffer("reinforce_baseline_ready", torch.zeros((), dtype=torch.bool))

    # ---------------------------------------------------------------------------------- building blocks
    def encode(self, features: torch.Tensor) -> dict:
        """Annotation vectors (B, L, D) -> what every decoding step needs, computed once."""
        annotations = self.project(features)
        mean = annotations.mean(dim=1)
        return {"annotations": annotations, "att_context": self.att_context(annotations),
                "h": self.init_h(mean), "c": self.init_c(mean)}

    def _attend(self, encoded: dict, h: torch.Tensor) -> torch.Tensor:
        scores = self.att_score(torch.tanh(encoded["att_context"] + self.att_hidden(h).unsqueeze(1)))
        return F.softmax(scores.squeeze(-1), dim=-1)  # (B, L)

    def _step(self, encoded: dict, tokens: torch.Tensor, h, c, sample: bool):
        """One LSTM step: attention from h_{t-1}, context, gate, LSTM, deep output. Returns logits and extras."""
        alpha = self._attend(encoded, h)
        if sample:
            index = torch.multinomial(alpha, 1).squeeze(1)
            context = encoded["annotations"][torch.arange(len(index), device=index.device), index]
            log_p_s = torch.log(alpha.gather(1, index[:, None]).squeeze(1).clamp_min(1e-12))
        else:
            context = torch.bmm(alpha.unsqueeze(1), encoded["annotations"]).squeeze(1)
            log_p_s = None
        if self.gate is not None:
            context = torch.sigmoid(self.gate(h)) * context
        embedded = self.embed(tokens)
        h, c = self.lstm(torch.cat([embedded, context], dim=-1), (h, c))
        if self.config.deep_output:
            logits = self.out_vocab(self.dropout(torch.tanh(embedded + self.out_hidden(self.dropout(h))
                                                            + self.out_context(context))))
        else:
            logits = self.out_vocab(self.dropout(h))
        return logits, h, c, alpha, log_p_s

    # ------------------------------------------------------------------------------------ training
    def forward(self, features: torch.Tensor, captions: torch.Tensor, sample: bool = False,
                image_index: torch.Tensor | None = None) -> dict:
        """Teacher forcing over ``captions`` (B, T) = <bos> ... <eos> <pad>...

        ``image_index`` (B,): the row of ``features`` each caption describes, when several captions share an image
        (each image is then encoded once); None: row i for caption i.
        Returns logits (B, T-1, V), attention (B, T-1, L) and, when ``sample``, log p(s_t) (B, T-1).
        """
        encoded = self.encode(features)
        if image_index is not None:
            encoded = {key: value.index_select(0, image_index) for key, value in encoded.items()}
        h, c = encoded["h"], encoded["c"]
        logits, alphas, log_p_s = [], [], []
        for t in range(captions.shape[1] - 1):
            step_logits, h, c, alpha, lps = self._step(encoded, captions[:, t], h, c, sample)
            logits.append(step_logits)
            alphas.append(alpha)
            if lps is not None:
                log_p_s.append(lps)
        out = {"logits": torch.stack(logits, 1), "alphas": torch.stack(alphas, 1)}
        if sample:
            out["log_p_s"] = torch.stack(log_p_s, 1)
        return out

    def doubly_stochastic_penalty(self, alphas: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """sum_i (1 - sum_t alpha_ti)^2 per caption, over the real (unpadded) steps. Shape (B,)."""
        attention_mass = (alphas * mask.unsqueeze(-1)).sum(dim=1)  # (B, L)
        return ((1.0 - attention_mass) ** 2).sum(dim=1)

    def loss(self, features: torch.Tensor, captions: torch.Tensor, image_index: torch.Tensor | None = None) -> dict:
        """Training loss as in the paper: caption NLL summed over time + penalties, averaged over the batch."""
        c = self.config
        targets = captions[:, 1:]
        mask = (targets != c.pad_id).float()
        # under torchrun rank 0's draw decides for every rank: a global batch is sampled or expected as a whole
        sample = (c.attention == "hard" and self.training
                  and distributed.broadcast_from_main(torch.rand(())) >= c.expected_context_p)
        out = self.forward(features, captions, sample=bool(sample), image_index=image_index)
        token_logp = -F.cross_entropy(out["logits"].transpose(1, 2), targets, reduction="none") * mask
        sentence_logp = token_logp.sum(1)  # log p(y | s, a) per caption
        loss = -sentence_logp.mean()
        penalty = self.doubly_stochastic_penalty(out["alphas"], mask).mean()
        loss = loss + c.doubly_stochastic * penalty
        metrics = {"nll_per_token": float(-token_logp.detach().sum() / mask.sum()),
                   "ds_penalty": float(penalty.detach())}
        if sample:
            # REINFORCE on the attention locations, with the paper's moving-average baseline
            reward = sentence_logp.detach()
            mean_reward = distributed.global_mean(reward)  # of the global batch: the baseline stays equal on all ranks
            if not self.reinforce_baseline_ready:  # start the average at the first reward, not at 0
                self.reinforce_baseline.fill_(mean_reward)
                self.reinforce_baseline_ready.fill_(True)
            advantage = reward - self.reinforce_baseline
            log_p_s = (out["log_p_s"] * mask).sum(1)
            entropy = -(out["alphas"] * torch.log(out["alphas"].clamp_min(1e-12))).sum(-1)
            entropy = (entropy * mask).sum(1)
            loss = loss - c.reinforce_scale * (advantage * log_p_s).mean() - c.entropy_weight * entropy.mean()
            with torch.no_grad():
                self.reinforce_baseline.mul_(c.baseline_decay).add_((1 - c.baseline_decay) * mean_reward)
            metrics["baseline"] = float(self.reinforce_baseline)
        return {"loss": loss, "tokens": mask.sum(), **metrics}

    # ------------------------------------------------------------------------------------ decoding
    def decoder(self, features: torch.Tensor) -> tuple[dict, "callable"]:
        """Initial state and a step function for :func:`captioner.decoding.beam_search`.

        Test-time attention is deterministic (expected context) for both soft and hard models.
        """
        encoded = self.encode(features)
        state = {"h": encoded.pop("h"), "c": encoded.pop("c"), "static": encoded}

        def step(tokens: torch.Tensor, state: dict):
            logits, h, c, alpha, _ = self._step(state["static"], tokens, state["h"], state["c"], sample=False)
            return F.log_softmax(logits.float(), dim=-1), {"h": h, "c": c, "static": state["static"]}, alpha

        return state, step

    @staticmethod
    def grid_side(num_locations: int) -> int:
        side = int(math.isqrt(num_locations))
        return side if side * side == num_locations else 0
