"""Show, Attend and Tell (Xu et al., ICML 2015) over a grid of annotation vectors.

Follows the paper and the authors' code (arctic-captions) rather than the popular tutorial:
- initial LSTM state from tanh MLPs on the mean annotation vector;
- additive attention queried by h_{t-1}, optional deeper context projection;
- a *scalar* gate beta_t = sigmoid(f_beta(h_{t-1})) by default (vector gate optional);
- deep output layer p(y_t) ~ exp(L_o(E y_{t-1} + L_h h_t + L_z z_t));
- doubly stochastic regularisation lambda * sum_i (1 - sum_t alpha_ti)^2, summed over locations;
- soft attention (z_t = sum_i alpha_ti a_i) or hard attention (a sampled location per step; its REINFORCE
  objective, with the moving-average baseline and the entropy bonus, is ``captioner.training.reinforce``).

Hard attention at test time uses the expected context, the paper's deterministic approximation
(sampling at test time would make decoding random).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from captioner.models.outputs import CaptionLoss


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

    def loss(self, features: torch.Tensor, captions: torch.Tensor, image_index: torch.Tensor | None = None,
             sample: bool = False) -> CaptionLoss:
        """Training loss as in the paper: caption NLL summed over time + lambda * the doubly stochastic penalty,
        averaged over the captions.

        ``sample``: draw the attention location of each step (hard attention) instead of the expected context. The
        REINFORCE term of hard attention is added by its objective (``captioner.training.reinforce``); ``extras`` then
        carry what it needs, per caption and summed over the real steps: ``sentence_logp`` (log p(y | s, a)),
        ``log_p_s`` and the attention ``entropy``.
        """
        c = self.config
        targets = captions[:, 1:]
        mask = (targets != c.pad_id).float()
        out = self.forward(features, captions, sample=sample, image_index=image_index)
        token_logp = -F.cross_entropy(out["logits"].transpose(1, 2), targets, reduction="none") * mask
        sentence_logp = token_logp.sum(1)
        penalty = self.doubly_stochastic_penalty(out["alphas"], mask).mean()
        tokens = mask.sum()
        extras = {"ds_penalty": penalty.detach()}
        if sample:
            entropy = -(out["alphas"] * torch.log(out["alphas"].clamp_min(1e-12))).sum(-1)
            extras.update(sentence_logp=sentence_logp, log_p_s=(out["log_p_s"] * mask).sum(1),
                          entropy=(entropy * mask).sum(1))
        return CaptionLoss(loss=-sentence_logp.mean() + c.doubly_stochastic * penalty, tokens=tokens,
                           nll_per_token=-token_logp.detach().sum() / tokens, extras=extras)

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
