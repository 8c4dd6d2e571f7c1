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
keys/values, so a beam step costs one token, not the whole prefix. Teacher forcing runs the position-wise layers on
real positions only (:class:`Packing`): the padded rows of captions and, when masked, of regions are never computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from captioner.models.dropout import Dropout
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


class Packing:
    """The real (non-pad) positions of a (B, T) batch of captions. Teacher-forced decoding runs its position-wise
    layers on those rows only, (n, d): a padded COCO batch is ~40% padding. Attention scatters them back to (B, T, d),
    zeros at the pads, which its masks never let a real position see."""

    def __init__(self, real: torch.Tensor):
        self.shape = real.shape
        self.rows = real.flatten().nonzero().squeeze(1)  # a device -> host sync (the count), once per step

    def pad(self, x: torch.Tensor) -> torch.Tensor:  # (n, d) -> (B, T, d)
        b, t = self.shape
        return x.new_zeros(b * t, x.shape[-1]).index_copy(0, self.rows, x).view(b, t, -1)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (n, ...)
        return x.reshape(self.shape.numel(), *x.shape[2:]).index_select(0, self.rows)


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention over heads, (B, h, nq, d_k) -> (B, nq, h * d_k)."""
    if q.device.type == "cpu" and q.dtype != torch.float32:
        # bf16 on the CPU: the flash kernel's backward is 4x slower than plain matmuls + softmax (fp32: 2x faster)
        with sdpa_kernel(SDPBackend.MATH):
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=keep)
    else:
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=keep)
    return out.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Multi-head attention with optional memory slots, post-LN residual: LN(q + Dropout(MHA(q, kv))).

    ``packing``: queries (and keys/values to project) are the real rows (n, d) of a padded batch (:class:`Packing`)."""

    def __init__(self, d_model: int, heads: int, dropout: float, memory_slots: int = 0):
        super().__init__()
        self.heads, self.d_k = heads, d_model // heads
        self.fc_q = nn.Linear(d_model, d_model)
        self.fc_k = nn.Linear(d_model, d_model)
        self.fc_v = nn.Linear(d_model, d_model)
        self.fc_o = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)
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

    def project_kv(self, kv: torch.Tensor, packing: Packing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.fc_k(kv), self.fc_v(kv)
        if packing is not None:
            keys, values = packing.pad(keys), packing.pad(values)
        if self.memory_slots:
            b = keys.shape[0]
            keys = torch.cat([keys, math.sqrt(self.d_k) * self.m_k.expand(b, -1, -1)], 1)
            values = torch.cat([values, math.sqrt(self.memory_slots) * self.m_v.expand(b, -1, -1)], 1)
        return self.split(keys), self.split(values)

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor | None,
               packing: Packing | None = None) -> torch.Tensor:
        """``keep``: bool, broadcastable to (B, h, nq, nk), True where a key may be attended."""
        return self.attend_each(queries, [(keys, values)], keep, packing)[0]

    def attend_each(self, queries: torch.Tensor, levels: list, keep: torch.Tensor | None,
                    packing: Packing | None = None) -> list[torch.Tensor]:
        """The queries' attention over each (keys, values) of ``levels`` (the meshed decoder's encoder layers): the
        query projection is computed once for all of them."""
        q = self.fc_q(queries)
        q = self.split(q if packing is None else packing.pad(q))
        outputs = []
        for keys, values in levels:
            out = attention(q, keys, values, keep)
            out = out if packing is None else packing.unpad(out)
            outputs.append(self.layer_norm(queries + self.dropout(self.fc_o(out))))
        return outputs

    def forward(self, queries, kv, keep=None, packing: Packing | None = None):
        keys, values = self.project_kv(kv, packing)
        if self.memory_slots and keep is not None:  # memory slots are always visible
            keep = torch.cat([keep, keep.new_ones(*keep.shape[:-1], self.memory_slots)], -1)
        return self.attend(queries, keys, values, keep, packing)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.dropout, self.dropout_2 = Dropout(dropout), Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x):
        return self.layer_norm(x + self.dropout(self.fc2(self.dropout_2(F.relu(self.fc1(x))))))


class EncoderLayer(nn.Module):
    def __init__(self, c: M2Config):
        super().__init__()
        self.mhatt = Attention(c.d_model, c.heads, c.dropout, c.memory_slots)
        self.pwff = FeedForward(c.d_model, c.d_ff, c.dropout)

    def forward(self, x, keep, packing: Packing | None = None):
        return self.pwff(self.mhatt(x, x, keep, packing))


class DecoderLayer(nn.Module):
    def __init__(self, c: M2Config):
        super().__init__()
        self.self_att = Attention(c.d_model, c.heads, c.dropout)
        self.enc_att = Attention(c.d_model, c.heads, c.dropout)
        self.gates = nn.ModuleList(nn.Linear(2 * c.d_model, c.d_model) for _ in range(c.encoder_layers))
        self.pwff = FeedForward(c.d_model, c.d_ff, c.dropout)

    def forward(self, x, self_kv, self_keep, enc_kv, enc_keep, not_pad=None, packing=None):
        """``self_kv``: (keys, values) already projected; ``enc_kv``: per encoder level (keys, values). Either
        ``x`` (B, T, d) with ``not_pad`` (B, T, 1) zeroing the pads' outputs, or only its real rows (n, d) with
        their ``packing``."""
        def real(y):
            return y if not_pad is None else y * not_pad

        s = real(self.self_att.attend(x, *self_kv, self_keep, packing))
        meshed = 0.0
        for gate, c in zip(self.gates, self.enc_att.attend_each(s, enc_kv, enc_keep, packing)):
            c = real(c)
            meshed = meshed + torch.sigmoid(gate(torch.cat([s, c], -1))) * c
        meshed = real(meshed / math.sqrt(len(enc_kv)))
        return real(self.pwff(meshed))


class MeshedMemoryTransformer(nn.Module):
    loss_normalisation = "token"  # loss() averages over target tokens (the trainer weighs data-parallel shards by it)

    def __init__(self, config: M2Config):
        super().__init__()
        self.config = c = config
        self.in_proj = nn.Linear(c.feature_dim, c.d_model)
        self.in_dropout = Dropout(c.dropout)
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
    def encode(self, features: torch.Tensor, num_boxes: torch.Tensor | None):
        """(B, N, D) regions -> each encoder layer's output, the regions' key mask (B, 1, 1, N) (True = attend) and
        the :class:`Packing` of the real regions. With ``num_boxes`` the layers run on the real regions only, (n, d)
        each (padded ones are masked: nothing reads them); in ``reference_compat`` mode on all of them, (B, N, d)."""
        if self.config.reference_compat or num_boxes is None:
            packing = None
            x = self.in_norm(self.in_dropout(F.relu(self.in_proj(features))))
            keep = x.sum(-1) != 0  # the reference's rule: practically never masks anything
        else:
            keep = torch.arange(features.shape[1], device=features.device)[None, :] < num_boxes.clamp_min(1)[:, None]
            packing = Packing(keep)
            x = self.in_norm(self.in_dropout(F.relu(self.in_proj(packing.unpad(features)))))
        keep = keep[:, None, None, :]
        outputs = []
        for layer in self.encoder_layers:
            x = layer(x, keep, packing)
            outputs.append(x)
        return outputs, keep, packing

    def _cross_kv(self, layer: DecoderLayer, enc: list, packing: Packing | None,
                  image_index: torch.Tensor | None = None):
        """Cross-attention keys/values of every encoder level, projected once per image and then repeated for
        each caption of it (``image_index``: the image row of each caption; None = one caption per image)."""
        kv = [layer.enc_att.project_kv(level, packing) for level in enc]
        if image_index is None:
            return kv
        return [(keys.index_select(0, image_index), values.index_select(0, image_index)) for keys, values in kv]

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.word_emb(tokens) + self.pos_table[positions]

    # ------------------------------------------------------------------------------------- training
    def forward(self, features, num_boxes, captions, image_index=None) -> torch.Tensor:
        """Teacher forcing: log-probs (B, T, V) for every position of ``captions`` (B, T)."""
        packing = Packing(captions != self.config.pad_id)
        hidden = packing.pad(self._decode_hidden(features, num_boxes, captions, packing, image_index))
        return F.log_softmax(self.out(hidden).float(), dim=-1)

    def _decode_hidden(self, features, num_boxes, captions, packing: Packing, image_index=None) -> torch.Tensor:
        """Teacher forcing: the last decoder layer's output (n, d) at the positions ``packing`` holds of ``captions``
        (B, T). Those must be a prefix of each caption's non-pad positions (what causal attention reads).

        ``image_index`` (B,): the row of ``features`` each caption describes. Captions of one image then share its
        encoder pass and cross-attention projections, the bulk of a training step's work (COCO: 5 per image)."""
        enc, enc_keep, enc_packing = self.encode(features, num_boxes)
        if image_index is not None:
            enc_keep = enc_keep.index_select(0, image_index)
        T = captions.shape[1]
        positions = torch.arange(1, T + 1, device=captions.device).expand_as(captions)
        x = self._embed(packing.unpad(captions), packing.unpad(positions))
        causal = torch.ones(T, T, dtype=torch.bool, device=captions.device).tril()
        self_keep = causal[None, None] & (captions != self.config.pad_id)[:, None, None, :]
        # the pads' own rows (scattered zeros, discarded) attend to themselves: an empty row would give NaNs, whose
        # gradients reach the keys
        self_keep = self_keep | torch.eye(T, dtype=torch.bool, device=captions.device)
        for layer in self.decoder_layers:
            kv = layer.self_att.project_kv(x, packing)
            x = layer(x, kv, self_keep, self._cross_kv(layer, enc, enc_packing, image_index), enc_keep, packing=packing)
        return x

    def loss(self, features, num_boxes, captions, image_index=None) -> CaptionLoss:
        """Mean NLL over the non-pad target tokens. The decoder and the vocabulary projection, its most expensive
        layer, run on the positions that predict those tokens only: a padded COCO batch is ~40% padding."""
        targets = captions[:, 1:]
        packing = Packing(targets != self.config.pad_id)
        hidden = self._decode_hidden(features, num_boxes, captions[:, :-1], packing, image_index)
        target = packing.unpad(targets)
        loss = F.cross_entropy(self.out(hidden).float(), target)
        return CaptionLoss(loss=loss, tokens=target.new_tensor(target.numel()), nll_per_token=loss.detach())

    # ------------------------------------------------------------------------------------- decoding
    def decoder_state(self, features, num_boxes) -> dict:
        enc, enc_keep, enc_packing = self.encode(features, num_boxes)
        b = features.shape[0]
        empty = enc[0].new_zeros(b, self.config.heads, 0, self.config.d_model // self.config.heads)
        return {
            "t": 0,  # steps taken so far (a plain int: not re-gathered with the beams)
            "cache": [(empty, empty) for _ in self.decoder_layers],
            "static": {"enc_kv": [self._cross_kv(layer, enc, enc_packing) for layer in self.decoder_layers],
                       "enc_keep": enc_keep},
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
