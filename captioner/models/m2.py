"""Meshed-Memory Transformer (Cornia et al., CVPR 2020) over bottom-up region features.

- Region projection: Linear -> ReLU -> Dropout -> LayerNorm (no box positions, as the reference).
- Memory-augmented encoder: each layer's self-attention appends ``memory_slots`` learned keys and
  values (in the projected space, scaled by sqrt(d_k) and sqrt(m)) after the region keys; memory is
  never masked. Post-LN residual blocks.
- Meshed decoder: masked self-attention, one shared cross-attention applied to *every* encoder
  layer's output, element-wise sigmoid gates per level, sum / sqrt(#levels), feed-forward.
- Output: Linear without bias, log-softmax.

Padded regions are masked by ``num_boxes``. ``reference_compat=True`` reproduces the reference
implementation instead: its padding mask is computed on the projected features, which is in practice
never set, so padded regions are attended; its positional table is whatever the checkpoint holds.
Incremental decoding caches each self-attention layer's keys/values and the per-image cross-attention
keys/values, so a beam step costs one token, not the whole prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from captioner.models.outputs import CaptionLoss


@dataclass
class M2Config:
    vocab_size: int
    feature_dim: int = 2048
    d_model: int = 512
    heads: int = 8
    d_ff: int = 2048
    encoder_layers: int = 3
    decoder_layers: int = 3
    memory_slots: int = 40
    dropout: float = 0.1
    max_length: int = 54  # longest decodable caption (positions 1..max_length)
    reference_compat: bool = False
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")


def sinusoid_table(rows: int, dim: int) -> torch.Tensor:
    """Interleaved sin/cos position table; row 0 (the padding position) is zero."""
    position = torch.arange(rows, dtype=torch.float32)[:, None]
    rate = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(rows, dim)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    table[0] = 0.0
    return table


class Attention(nn.Module):
    """Multi-head attention with optional memory slots, post-LN residual: LN(q + Dropout(MHA(q, kv)))."""

    def __init__(self, d_model: int, heads: int, dropout: float, memory_slots: int = 0):
        super().__init__()
        self.heads, self.d_k = heads, d_model // heads
        self.fc_q = nn.Linear(d_model, d_model)
        self.fc_k = nn.Linear(d_model, d_model)
        self.fc_v = nn.Linear(d_model, d_model)
        self.fc_o = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model)
        self.memory_slots = memory_slots
        if memory_slots:
            # Not the init the memory slots end with: MeshedMemoryTransformer re-initialises every matrix (these
            # too) with xavier_uniform, as the reference does. The normal draws stay, as in the reference, because
            # they advance the RNG: with them a seed gives the reference's initial weights.
            self.m_k = nn.Parameter(torch.randn(1, memory_slots, d_model) / math.sqrt(self.d_k))
            self.m_v = nn.Parameter(torch.randn(1, memory_slots, d_model) / math.sqrt(memory_slots))

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (B, n, d) -> (B, h, n, d_k)
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_k).transpose(1, 2)

    def project_kv(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.fc_k(kv), self.fc_v(kv)
        if self.memory_slots:
            b = kv.shape[0]
            keys = torch.cat([keys, math.sqrt(self.d_k) * self.m_k.expand(b, -1, -1)], 1)
            values = torch.cat([values, math.sqrt(self.memory_slots) * self.m_v.expand(b, -1, -1)], 1)
        return self.split(keys), self.split(values)

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               keep: torch.Tensor | None) -> torch.Tensor:
        """``keep``: bool, broadcastable to (B, h, nq, nk), True where a key may be attended."""
        q = self.split(self.fc_q(queries))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=keep)
        out = out.transpose(1, 2).reshape(queries.shape)
        return self.layer_norm(queries + self.dropout(self.fc_o(out)))

    def forward(self, queries, kv, keep=None):
        keys, values = self.project_kv(kv)
        if self.memory_slots and keep is not None:  # memory slots are always visible
            keep = torch.cat([keep, keep.new_ones(*keep.shape[:-1], self.memory_slots)], -1)
        return self.attend(queries, keys, values, keep)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.dropout, self.dropout_2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x):
        return self.layer_norm(x + self.dropout(self.fc2(self.dropout_2(F.relu(self.fc1(x))))))


class EncoderLayer(nn.Module):
    def __init__(self, c: M2Config):
        super().__init__()
        self.mhatt = Attention(c.d_model, c.heads, c.dropout, c.memory_slots)
        self.pwff = FeedForward(c.d_model, c.d_ff, c.dropout)

    def forward(self, x, keep):
        return self.pwff(self.mhatt(x, x, keep))


class DecoderLayer(nn.Module):
    def __init__(self, c: M2Config):
        super().__init__()
        self.self_att = Attention(c.d_model, c.heads, c.dropout)
        self.enc_att = Attention(c.d_model, c.heads, c.dropout)
        self.gates = nn.ModuleList(nn.Linear(2 * c.d_model, c.d_model) for _ in range(c.encoder_layers))
        self.pwff = FeedForward(c.d_model, c.d_ff, c.dropout)

    def forward(self, x, self_kv, self_keep, enc_kv, enc_keep, not_pad):
        """``self_kv``: (keys, values) already projected; ``enc_kv``: per encoder level (keys, values)."""
        s = self.self_att.attend(x, *self_kv, self_keep) * not_pad
        meshed = 0.0
        for gate, (keys, values) in zip(self.gates, enc_kv):
            c = self.enc_att.attend(s, keys, values, enc_keep) * not_pad
            meshed = meshed + torch.sigmoid(gate(torch.cat([s, c], -1))) * c
        meshed = meshed / math.sqrt(len(enc_kv)) * not_pad
        return self.pwff(meshed) * not_pad


class MeshedMemoryTransformer(nn.Module):
    loss_normalisation = "token"  # loss() averages over target tokens (the trainer weighs data-parallel shards by it)

    def __init__(self, config: M2Config):
        super().__init__()
        self.config = c = config
        self.in_proj = nn.Linear(c.feature_dim, c.d_model)
        self.in_dropout = nn.Dropout(c.dropout)
        self.in_norm = nn.LayerNorm(c.d_model)
        self.encoder_layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.word_emb = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.register_buffer("pos_table", sinusoid_table(c.max_length + 1, c.d_model))
        self.decoder_layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        self.out = nn.Linear(c.d_model, c.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif "gates" in name or "fc_" in name:
                nn.init.zeros_(p)

    # ------------------------------------------------------------------------------------- encoder
    def encode(self, features: torch.Tensor, num_boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) regions -> encoder outputs (B, layers, N, d) and key mask (B, 1, 1, N), True = attend."""
        x = self.in_norm(self.in_dropout(F.relu(self.in_proj(features))))
        n = features.shape[1]
        if self.config.reference_compat or num_boxes is None:
            keep = x.sum(-1) != 0  # the reference's rule: practically never masks anything
        else:
            keep = torch.arange(n, device=x.device)[None, :] < num_boxes.clamp_min(1)[:, None]
        keep = keep[:, None, None, :]
        outputs = []
        for layer in self.encoder_layers:
            x = layer(x, keep)
            outputs.append(x)
        return torch.stack(outputs, 1), keep

    def _cross_kv(self, layer: DecoderLayer, enc: torch.Tensor, image_index: torch.Tensor | None = None):
        """Cross-attention keys/values of every encoder level, projected once per image and then repeated for
        each caption of it (``image_index``: the image row of each caption; None = one caption per image)."""
        kv = [layer.enc_att.project_kv(enc[:, i]) for i in range(enc.shape[1])]
        if image_index is None:
            return kv
        return [(keys.index_select(0, image_index), values.index_select(0, image_index)) for keys, values in kv]

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.word_emb(tokens) + self.pos_table[positions]

    # ------------------------------------------------------------------------------------- training
    def forward(self, features, num_boxes, captions, image_index=None) -> torch.Tensor:
        """Teacher forcing: log-probs (B, T, V) for every position of ``captions`` (B, T)."""
        return F.log_softmax(self.out(self._decode_hidden(features, num_boxes, captions, image_index)).float(), dim=-1)

    def _decode_hidden(self, features, num_boxes, captions, image_index=None) -> torch.Tensor:
        """Teacher forcing: the last decoder layer's output (B, T, d) for every position of ``captions``.

        ``image_index`` (B,): the row of ``features`` each caption describes. Captions of one image then share its
        encoder pass and cross-attention projections, the bulk of a training step's work (COCO: 5 per image)."""
        enc, enc_keep = self.encode(features, num_boxes)
        if image_index is not None:
            enc_keep = enc_keep.index_select(0, image_index)
        pad = self.config.pad_id
        T = captions.shape[1]
        not_pad = (captions != pad).unsqueeze(-1).float()
        positions = torch.arange(1, T + 1, device=captions.device)[None].expand_as(captions).masked_fill(
            captions == pad, 0)
        causal = torch.ones(T, T, dtype=torch.bool, device=captions.device).tril()
        self_keep = causal[None, None] & (captions != pad)[:, None, None, :]
        self_keep = self_keep | torch.eye(T, dtype=torch.bool, device=captions.device)  # no empty rows
        x = self._embed(captions, positions)
        for layer in self.decoder_layers:
            kv = layer.self_att.project_kv(x)
            x = layer(x, kv, self_keep, self._cross_kv(layer, enc, image_index), enc_keep, not_pad)
        return x

    def loss(self, features, num_boxes, captions, image_index=None) -> CaptionLoss:
        """Mean NLL over the non-pad target tokens. The vocabulary projection, the most expensive layer, runs on
        those tokens only: a padded COCO batch is ~40% padding."""
        hidden = self._decode_hidden(features, num_boxes, captions[:, :-1], image_index)
        targets = captions[:, 1:]
        real = targets != self.config.pad_id
        loss = F.cross_entropy(self.out(hidden[real]).float(), targets[real])
        return CaptionLoss(loss=loss, tokens=real.sum(), nll_per_token=loss.detach())

    # ------------------------------------------------------------------------------------- decoding
    def decoder_state(self, features, num_boxes) -> dict:
        enc, enc_keep = self.encode(features, num_boxes)
        b = features.shape[0]
        empty = enc.new_zeros(b, self.config.heads, 0, self.config.d_model // self.config.heads)
        return {
            "t": 0,  # steps taken so far (a plain int: not re-gathered with the beams)
            "cache": [(empty, empty) for _ in self.decoder_layers],
            "static": {"enc_kv": [self._cross_kv(layer, enc) for layer in self.decoder_layers], "enc_keep": enc_keep},
        }

    def step(self, tokens: torch.Tensor, state: dict):
        """One decoding step with the key/value cache. ``tokens``: (N,) previous words."""
        t = state["t"] + 1
        if t > self.config.max_length:
            raise ValueError(f"decoding past max_length {self.config.max_length}")
        x = self._embed(tokens[:, None], torch.full_like(tokens[:, None], t))
        not_pad = (tokens != self.config.pad_id)[:, None, None].float()
        static = state["static"]
        cache = []
        for layer, (keys, values), enc_kv in zip(self.decoder_layers, state["cache"], static["enc_kv"]):
            new_k, new_v = layer.self_att.project_kv(x)
            keys, values = torch.cat([keys, new_k], 2), torch.cat([values, new_v], 2)
            cache.append((keys, values))
            x = layer(x, (keys, values), None, enc_kv, static["enc_keep"], not_pad)
        log_probs = F.log_softmax(self.out(x[:, 0]).float(), dim=-1)
        return log_probs, {"t": t, "cache": cache, "static": static}, None

    def decoder(self, features, num_boxes=None):
        return self.decoder_state(features, num_boxes), self.step
