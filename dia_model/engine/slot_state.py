"""The slot engine's device state: a fixed number of slots, each decoding its own request at its
own timeline position, and the step that advances them all.

All per-slot state lives in device tensors of a fixed shape (timeline, positions, countdowns,
sampling settings, self-attention and cross-attention caches), so the step has the same shape
whatever requests come and go, and a slot is refilled by writing into its rows. The math of one
step is ``step.DecodeStep``, the one ``static.generate_rows`` runs, per slot: the delay pattern, the
teacher-forced prompt head, EOS and the 15-step countdown, CFG with the conditional and unconditional
rows side by side (rows 2s and 2s+1 belong to slot s). Which request sits in which slot is kept by
``slot_table.SlotTable``; this module knows only slot numbers.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from ..nn.model import DiaModel, KVCache, cache_dtype
from ..text import text_batch
from .buckets import TEXT_BUCKET, round_up
from .segments import Segments

ADMIT_GROUP = 16  # requests admitted together at most on an accelerator (bounds admission's transient memory)
from .sampling import RowSampling
from .step import DecodeStep
from .timeline import NOT_GENERATED, RowOutput, RowRequest, delayed_prompt, row_output


def _paired(x: Tensor) -> Tensor:
    """Each slot's entry twice (its unconditional and conditional rows): [n, ...] -> [2n, ...].

    An expand, not ``repeat_interleave``, so the step stays free of size computations."""
    return x[:, None].expand(x.shape[0], 2, *x.shape[1:]).reshape(2 * x.shape[0], *x.shape[1:])


def slot_bytes(model: DiaModel, device: torch.device, text_capacity: int | None = None) -> int:
    """Device memory one slot holds: self-attention K/V for the whole timeline, cross-attention K/V
    for ``text_capacity`` bytes of script (default: the longest script), and its timeline."""
    cfg = model.cfg
    item = torch.empty((), dtype=cache_dtype(model.decoder.head.weight.dtype, device)).element_size()
    text = text_capacity or cfg.text_length
    self_kv = 2 * 2 * cfg.dec_layers * cfg.dec_kv_heads * (cfg.max_frames + 2) * cfg.dec_head_dim * item
    cross_kv = 2 * 2 * cfg.dec_layers * cfg.cross_heads * text * cfg.cross_head_dim * item
    return self_kv + cross_kv + (cfg.max_frames + 3) * cfg.channels * 8


class SlotState:
    """Device state of ``n`` slots and the step that advances every live slot by one frame."""

    def __init__(self, model: DiaModel, n: int, device: torch.device, *, whole_cross: bool | None = None,
                 admit_group: int | None = None):
        """``whole_cross`` / ``admit_group``: the accelerator policies (a cross cache allocated whole,
        admission in bounded groups); None: on for every device but the CPU."""
        cfg = self.cfg = model.cfg
        self.model, self.n, self.device = model, n, device
        accelerator = device.type != "cpu"
        self.whole_cross = accelerator if whole_cross is None else whole_cross
        self.admit_group = admit_group or (ADMIT_GROUP if accelerator else None)
        self.kv_dtype = cache_dtype(model.decoder.head.weight.dtype, device)
        self.capacity = cfg.max_frames + 1  # positions a slot can hold (one spare for a finished slot)
        self.timeline = torch.full((n, self.capacity + 1, cfg.channels), NOT_GENERATED, dtype=torch.long,
                                   device=device)
        self.cache = KVCache(cfg.dec_layers, 2 * n, cfg.dec_kv_heads, self.capacity, cfg.dec_head_dim,
                             self.kv_dtype, device)
        self.text_capacity = 0
        self.layout = 0  # bumped whenever a state tensor is reallocated (captured graphs then go stale)
        self.cross_kv: list[tuple[Tensor, Tensor]] = []
        self.cross_mask = torch.zeros(2 * n, 1, 1, 0, dtype=torch.bool, device=device)
        self._cross_whole: list[tuple[Tensor, Tensor]] = []  # accelerators: the whole cache, cross_kv views it
        self._mask_whole = self.cross_mask
        self._grow_text(TEXT_BUCKET)
        longs = lambda fill: torch.full((n,), fill, dtype=torch.long, device=device)  # noqa: E731
        self.t = longs(0)  # each slot's input position
        self.max_tokens = longs(1)
        self.countdown = longs(-1)  # -1: not triggered; counts down to 0 after EOS or the length limit
        self.finished_at = longs(-1)
        self.ended_by_eos = torch.zeros(n, dtype=torch.bool, device=device)
        self.live = torch.zeros(n, dtype=torch.bool, device=device)
        self.sampling = RowSampling(
            cfg_scale=torch.zeros(n, dtype=torch.float32, device=device),
            temperature=torch.zeros(n, dtype=torch.float32, device=device),
            top_p=torch.ones(n, dtype=torch.float32, device=device),
            top_k=longs(1), keys=longs(0),
        )
        self.decode = DecodeStep(cfg, device)
        self.slot_index = torch.arange(n, device=device)

    # ------------------------------------------------------------------ admission
    def _grow_text(self, needed: int) -> None:
        """Make the cross-attention cache hold ``needed`` script bytes (keeps what it holds).

        On an accelerator the cache is allocated once at the longest script (as ``slot_bytes`` counts
        it) and the step reads only the width in use: growing mid-stream would hold the old and the
        new cache at once, a spike the slot sizing does not count. On a CPU it grows in buckets."""
        cfg = self.cfg
        size = min(round_up(needed, TEXT_BUCKET), max(cfg.text_length, needed))
        if size <= self.text_capacity:
            return
        if self.whole_cross:
            if not self._cross_whole:
                whole = max(cfg.text_length, size)
                shape = (2 * self.n, cfg.cross_heads, whole, cfg.cross_head_dim)
                self._cross_whole = [(torch.zeros(shape, dtype=self.kv_dtype, device=self.device),
                                      torch.zeros(shape, dtype=self.kv_dtype, device=self.device))
                                     for _ in range(cfg.dec_layers)]
                self._mask_whole = torch.zeros(2 * self.n, 1, 1, whole, dtype=torch.bool, device=self.device)
            self.cross_kv = [(k[:, :, :size], v[:, :, :size]) for k, v in self._cross_whole]
            self.cross_mask = self._mask_whole[..., :size]
            self.cross_mask[..., 0] |= ~self.cross_mask.any(dim=-1)  # an empty slot attends to one (zero) key
            self.text_capacity = size
            self.layout += 1  # new views: captured graphs read the old width
            return
        grown = []
        for i in range(cfg.dec_layers):
            pair = []
            for j in range(2):
                new = torch.zeros(2 * self.n, cfg.cross_heads, size, cfg.cross_head_dim, dtype=self.kv_dtype,
                                  device=self.device)
                if self.cross_kv:
                    new[:, :, : self.text_capacity] = self.cross_kv[i][j]
                pair.append(new)
            grown.append((pair[0], pair[1]))
        mask = torch.zeros(2 * self.n, 1, 1, size, dtype=torch.bool, device=self.device)
        mask[..., : self.text_capacity] = self.cross_mask
        mask[..., 0] |= ~mask.any(dim=-1)  # an empty slot attends to one (zero) key: no NaN rows
        self.cross_kv, self.cross_mask, self.text_capacity = grown, mask, size
        self.layout += 1

    @torch.inference_mode()
    def admit(self, slots: list[int], requests: list[RowRequest]) -> None:
        """Start ``requests`` in the (free) ``slots``: encoder pass, cross-attention K/V, timeline head,
        settings, and the prompt prefill. On an accelerator in groups of ``ADMIT_GROUP``: the encoder
        output and the cross K/V of the requests being admitted are held beside the cache, and a
        first admission of every slot at once would hold them for all (memory the sizing leaves
        for activations)."""
        group = self.admit_group or max(1, len(slots))
        for start in range(0, len(slots), group):
            self._admit(slots[start:start + group], requests[start:start + group])

    def _admit(self, slots: list[int], requests: list[RowRequest]) -> None:
        cfg, dev, model = self.cfg, self.device, self.model
        ids, real = text_batch([r.script for r in requests], dev)
        enc_ids = torch.stack((torch.zeros_like(ids), ids), dim=1).flatten(0, 1)
        enc_real = _paired(real)
        cross = model.decoder.cross_keys_values(model.encoder(enc_ids, enc_real), self.kv_dtype)
        width = ids.shape[1]
        self._grow_text(width)
        index = torch.tensor(slots, dtype=torch.long, device=dev)
        rows = torch.stack((2 * index, 2 * index + 1), dim=1).flatten()
        for (k, v), (ck, cv) in zip(cross, self.cross_kv):
            ck[rows], cv[rows] = 0, 0
            ck[rows, :, :width], cv[rows, :, :width] = k, v
        mask = torch.zeros(len(rows), 1, 1, self.text_capacity, dtype=torch.bool, device=dev)
        mask[..., :width] = enc_real[:, None, None, :]
        self.cross_mask[rows] = mask

        lengths = [r.prompt_frames for r in requests]
        self.timeline[index] = NOT_GENERATED
        for s, r in zip(slots, requests):
            head = delayed_prompt(cfg, r.prompt).to(dev)
            self.timeline[s, : len(head)] = head
        as_long = lambda values: torch.tensor(values, dtype=torch.long, device=dev)  # noqa: E731
        self.t[index] = as_long(lengths)
        self.max_tokens[index] = as_long([r.max_tokens(cfg) for r in requests])
        self.countdown[index], self.finished_at[index], self.ended_by_eos[index], self.live[index] = -1, -1, False, True
        self.sampling.assign(index, RowSampling.of(requests, dev))
        self._prefill(slots, lengths)

    def _prefill(self, slots: list[int], lengths: list[int]) -> None:
        """Teacher-force each prompted slot's timeline [0, L) into its cache, slots of equal L in one pass."""
        groups: dict[int, list[int]] = defaultdict(list)
        for s, length in zip(slots, lengths):
            if length:
                groups[length].append(s)
        cfg = self.cfg
        for length, group in groups.items():
            index = torch.tensor(group, dtype=torch.long, device=self.device)
            rows = torch.stack((2 * index, 2 * index + 1), dim=1).flatten()
            scratch = KVCache(cfg.dec_layers, len(rows), cfg.dec_kv_heads, length, cfg.dec_head_dim,
                              self.kv_dtype, self.device)
            cross = [(k[rows], v[rows]) for k, v in self.cross_kv]
            frames = _paired(self.timeline[index, :length])
            self.model.decoder(frames, 0, scratch, cross, self.cross_mask[rows])
            self.cache.k[:, rows, :, :length] = scratch.k
            self.cache.v[:, rows, :, :length] = scratch.v

    # ------------------------------------------------------------------ the step
    @torch.inference_mode()
    def step(self, length: int, k_max: int, segments: Segments | None = None,
             cross_segments: Segments | None = None) -> Tensor:
        """Advance every live slot by one frame; -> bool [n], True for slots that finished in this step.

        ``length`` (> every live position) bounds the self-attention read; ``k_max`` bounds top-k.
        ``segments`` / ``cross_segments`` (eager steps only): runs of cache rows, each reading its own
        self-attention length / script width instead (``segments.py``).
        Free and finished slots ride along at position 0 and change nothing of their own state.
        Every piece of state is updated in place and nothing asks the host a question, so the step
        can be captured once as a CUDA graph and replayed (``graphs.GraphedStep``).
        """
        cfg, n = self.cfg, self.n
        live, t, slot = self.live, self.t, self.slot_index
        position = torch.where(live, t, 0)
        frame = _paired(torch.where(live[:, None], self.timeline[slot, position], 0))
        logits = self.model.decoder.step(frame, _paired(position), self.cache, self.cross_kv, self.cross_mask,
                                         length, segments, cross_segments)
        cur = position + 1  # the timeline cell being predicted
        out = self.decode(logits.view(n, 2, cfg.channels, cfg.audio_vocab), self.sampling, k_max, position,
                          self.timeline[slot, cur], self.countdown, self.max_tokens, live)
        self.finished_at.copy_(torch.where(out.triggered, cur, self.finished_at))
        self.ended_by_eos.logical_or_(out.eos_hit)
        self.timeline[slot, cur] = out.written
        self.t.copy_(torch.where(live, cur, t))
        self.countdown.copy_(out.countdown)
        self.live.logical_and_(~out.finished)
        return out.finished

    @torch.inference_mode()
    def compact(self, keep: list[int], length: int) -> None:
        """Keep only the slots ``keep`` (renumbered 0..len-1 in that order); ``length`` cache positions
        are copied. For the tail of a stream on a CPU, where compute grows with rows: once no request
        is waiting, a freed slot would only cost compute (a captured graph keeps its shape instead).

        In place: the kept slots move to the front of each state tensor, which then views that prefix,
        so nothing is allocated or zero-filled. Cache positions past ``length`` keep stale (finite)
        values of earlier occupants, as a refilled slot's do: a slot writes its position before it
        attends to it and never attends past it."""
        m = len(keep)
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        rows = torch.stack((2 * index, 2 * index + 1), dim=1).flatten()
        length = min(length, self.capacity)
        self.n = m
        self.timeline[:m] = self.timeline[index]
        self.timeline = self.timeline[:m]
        for big in (self.cache.k, self.cache.v):
            big[:, : 2 * m, :, :length] = big[:, rows, :, :length]
        self.cache.k, self.cache.v = self.cache.k[:, : 2 * m], self.cache.v[:, : 2 * m]
        for k, v in self.cross_kv:
            k[: 2 * m], v[: 2 * m] = k[rows], v[rows]
        self.cross_kv = [(k[: 2 * m], v[: 2 * m]) for k, v in self.cross_kv]
        self.cross_mask[: 2 * m] = self.cross_mask[rows]
        self.cross_mask = self.cross_mask[: 2 * m]
        for name in ("t", "max_tokens", "countdown", "finished_at", "ended_by_eos", "live"):
            full = getattr(self, name)
            full[:m] = full[index]
            setattr(self, name, full[:m])
        self.sampling = self.sampling.select(index)
        self.slot_index = self.slot_index[:m]
        self.layout += 1

    # ------------------------------------------------------------------ results
    def output(self, s: int, prompt_frames: int) -> RowOutput:
        """The finished slot's codes (delay reverted, prompt excluded), read from its timeline."""
        return row_output(self.cfg, self.timeline[s].cpu(), prompt_frames, int(self.finished_at[s]),
                          bool(self.ended_by_eos[s]))
