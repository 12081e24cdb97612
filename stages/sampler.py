"""Turn the last stage's logits into next tokens on the device, in one vectorised pass over the sampled rows.

Greedy rows take the argmax. The other rows apply temperature, then top-k, then top-p (on the tempered, top-k
filtered distribution; the first token always stays), and draw with the Gumbel-max trick: the token is the
argmax of ``logit / temperature + g`` (float64) over the kept tokens, where ``g = -log(-log u)`` and ``u`` is a uniform
number made by hashing (seed, step, token id) with SplitMix64. The noise of a row depends only on its request's
seed (its sequence id when the request has none) and its step, so a seeded request gives the same tokens
however it is batched, chunked or split over stages, and no row's draw depends on another row.

``SamplingTensors.build`` runs on the host from the plan and ships a few small tensors with non-blocking copies;
``sample_tensors`` then runs on the device without a host synchronisation. ``sample`` wraps both for callers
that want a list of token ids. Each token's score depends on its own logit alone, so a head whose vocabulary is
split over two stages samples the same tokens (``best_in_shard``, ``merge_best``; ``stages/vocab_parallel.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pp_runtime.plan import Piece

_U64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's state increment (odd: visits every 64-bit state)
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # SplitMix64's finaliser multipliers
_SEED_SALT = 0x5851F42D4C957F2D  # keeps seed 0 / step 0 away from the all-zero state
_ROW_BLOCK = 64  # drawn rows per vectorised block
_MAX_TOP_K = 1 << 62
_MIN_TEMPERATURE = torch.finfo(torch.float32).tiny


def _signed(x: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``x`` (torch has no uint64 arithmetic)."""
    x &= _U64
    return x - (1 << 64) if x >= 1 << 63 else x


def mix64(x: int) -> int:
    """SplitMix64's finaliser on a Python int taken modulo 2**64; returns the unsigned 64-bit result."""
    x &= _U64
    x = ((x ^ (x >> 30)) * _M1) & _U64
    x = ((x ^ (x >> 27)) * _M2) & _U64
    return x ^ (x >> 31)


def row_key(seed: int, step: int) -> int:
    """The (unsigned) SplitMix64 state of one draw: a hash of the request seed and the step."""
    return mix64(mix64(seed + _SEED_SALT) + step * _GAMMA)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic: mask the copied sign bits)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64_tensor(x: torch.Tensor) -> torch.Tensor:
    """``mix64`` on int64 tensors holding 64-bit patterns (multiplication wraps modulo 2**64 on CPU and CUDA)."""
    x = (x ^ _shr(x, 30)) * _signed(_M1)
    x = (x ^ _shr(x, 27)) * _signed(_M2)
    return x ^ _shr(x, 31)


def gumbel_noise(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Gumbel noise ``[N, V]`` (float64) for rows with SplitMix64 states ``keys`` ``[N]`` at ``token_ids``
    (``[V]`` or ``[N, V]``): the (token id + 1)-th output of each row's SplitMix64 stream, as a uniform in (0, 1)."""
    bits = mix64_tensor(keys[:, None] + (token_ids + 1) * _signed(_GAMMA))  # [N, V]
    # The top 53 bits, centred in their interval: u is never 0 or 1, so both logarithms are finite.
    u = (_shr(bits, 11).to(torch.float64) + 0.5) * 2.0**-53
    return -torch.log(-torch.log(u))


def is_filtered(params) -> bool:
    """A drawn row that needs its whole distribution: top-k or top-p on (greedy rows never filter)."""
    return not params.greedy and (params.top_k > 0 or params.top_p < 1.0)


@dataclass(frozen=True)
class DrawnRows:
    """The drawn rows of one kind (``N`` of them) on the device: which of the S rows, and their parameters."""

    count: int  # N, known on the host
    index: torch.Tensor  # [N] int64: positions among the S sampled rows
    temperature: torch.Tensor  # [N] float32, > 0
    top_k: torch.Tensor  # [N] int64, 0 = off
    top_p: torch.Tensor  # [N] float32, 1 = off
    keys: torch.Tensor  # [N] int64: row_key(seed, step) as a 64-bit pattern

    @staticmethod
    def build(drawn: list[tuple[int, Piece]], device: torch.device) -> DrawnRows | None:
        if not drawn:
            return None
        # top_k beyond any vocabulary means no filter; clamped so that it fits an int64.
        ints = torch.tensor([[i for i, _ in drawn], [min(p.params.top_k, _MAX_TOP_K) for _, p in drawn],
                             [_signed(row_key(_seed(p), p.step)) for _, p in drawn]], dtype=torch.int64)  # [3, N]
        # A temperature below float32's smallest normal would round to 0 and divide by 0; clamped, it stays greedy.
        floats = torch.tensor([[max(p.params.temperature, _MIN_TEMPERATURE) for _, p in drawn],
                               [p.params.top_p for _, p in drawn]], dtype=torch.float32)  # [2, N]
        ints, floats = _to_device(ints, device), _to_device(floats, device)
        return DrawnRows(len(drawn), index=ints[0], temperature=floats[0], top_k=ints[1], top_p=floats[1],
                         keys=ints[2])


@dataclass(frozen=True)
class SamplingTensors:
    """Per-micro-batch sampling inputs on the device: one row per sampled piece, in plan order.

    Greedy rows need nothing but the maximum. ``drawn`` holds the rows drawn from the whole tempered
    distribution, ``filtered`` those with top-k or top-p (which need every logit of their row at once); both are
    None when there are none, known on the host, so the common cases skip work without a synchronisation.
    """

    num_rows: int  # S: sampled pieces in the micro-batch
    drawn: DrawnRows | None = None
    filtered: DrawnRows | None = None

    @property
    def all_greedy(self) -> bool:
        return self.drawn is None and self.filtered is None

    @staticmethod
    def build(pieces: list[Piece], device: torch.device) -> SamplingTensors:
        """From the sampling pieces of a micro-batch (in plan order): one small non-blocking copy per tensor."""
        drawn = [(i, p) for i, p in enumerate(pieces) if not p.params.greedy and not is_filtered(p.params)]
        filtered = [(i, p) for i, p in enumerate(pieces) if is_filtered(p.params)]
        return SamplingTensors(len(pieces), drawn=DrawnRows.build(drawn, device),
                               filtered=DrawnRows.build(filtered, device))


def _seed(p: Piece) -> int:
    return p.params.seed if p.params.seed is not None else p.seq_id


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def best_in_shard(logits: torch.Tensor, st: SamplingTensors, vocab_start: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's best token in a slice of the vocabulary, and its score: ``logits`` ``[S, V_shard]`` (float32) are
    tokens ``vocab_start ..``; returns ``(score [S] float64, token id [S] int64)`` on the logits' device.

    The score is what the sampler maximises over the vocabulary, token by token: the logit on greedy rows, and
    ``logit / temperature + g(token id)`` (float64) on drawn rows. It depends only on the token's own logit, so the
    best of two slices' bests (``merge_best``) is the best over both, whichever way the vocabulary is split. Rows
    in ``st.filtered`` get placeholder values (their draw needs the whole row: ``draw_filtered``).
    """
    best, ids = logits.max(dim=-1)  # [S] each; the first maximum, as argmax
    scores, ids = best.double(), ids + vocab_start
    rows = st.drawn
    if rows is None:
        return scores, ids
    # Drawn rows go in blocks: a block's temporaries (int64 hashes, float64 noise) are some 24 bytes per logit, so
    # blocks bound the peak memory; each row's score is the same whichever block it lands in.
    token_ids = torch.arange(vocab_start, vocab_start + logits.shape[-1], dtype=torch.int64, device=logits.device)
    for i in range(0, rows.count, _ROW_BLOCK):
        block = slice(i, i + _ROW_BLOCK)
        index = rows.index[block]
        x = logits.index_select(0, index).double() / rows.temperature[block, None].double()  # [B, V_shard]
        got, at = (x + gumbel_noise(rows.keys[block], token_ids)).max(dim=-1)
        scores = scores.index_copy(0, index, got)
        ids = ids.index_copy(0, index, at + vocab_start)
    return scores, ids


def merge_best(low: tuple[torch.Tensor, torch.Tensor], high: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Token ids ``[S]`` from the ``best_in_shard`` results of two slices, ``low`` holding the lower token ids: the
    higher score wins, a tie goes to the lower id (as argmax over the whole row)."""
    return torch.where(high[0] > low[0], high[1], low[1])


def draw_filtered(logits: torch.Tensor, rows: DrawnRows) -> torch.Tensor:
    """Token ids ``[F]`` for the filtered rows from their whole rows of logits ``[F, vocab]`` (float32, in the order of
    ``rows.index``): top-k, then top-p, then the Gumbel draw over the kept tokens. On the CPU each row sorts only
    its candidates (``_candidates``); on a GPU the whole row (fast there, and without a host synchronisation)."""
    cpu = logits.device.type == "cpu"
    tokens = [_draw_filtered(logits[i:i + _ROW_BLOCK], rows.temperature[i:i + _ROW_BLOCK], rows.keys[i:i + _ROW_BLOCK],
                             rows.top_k[i:i + _ROW_BLOCK], rows.top_p[i:i + _ROW_BLOCK], candidates=cpu)
              for i in range(0, rows.count, _ROW_BLOCK)]
    return torch.cat(tokens)


def sample_tensors(logits: torch.Tensor, st: SamplingTensors) -> torch.Tensor:
    """``logits`` ``[S, vocab]`` (float32), one row per sampling piece; returns ``[S]`` int64 token ids on the
    logits' device, without synchronising with the host."""
    if st.all_greedy:
        return logits.argmax(dim=-1)  # [S]
    _, out = best_in_shard(logits, st)
    if st.filtered is not None:
        f = st.filtered
        out = out.index_copy(0, f.index, draw_filtered(logits.index_select(0, f.index), f))
    return out


def _draw_filtered(logits: torch.Tensor, temperature: torch.Tensor, keys: torch.Tensor, top_k: torch.Tensor,
                   top_p: torch.Tensor, *, candidates: bool = False) -> torch.Tensor:
    """Top-k, then top-p, then the Gumbel draw, for a block of rows ``[B, V]`` at once in sorted order (stable, so
    ties are ordered by token id whatever the batch). Rows with top_k 0 and top_p 1 keep every token.
    ``candidates``: sort only the tokens that can be kept (``_candidates``); the same draw as sorting every token."""
    vocab = logits.shape[-1]
    # The filters see the tempered row shifted by its maximum (a tiny temperature must not overflow to inf - inf).
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature[:, None]  # [B, V]
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab)  # [B]
    # top-k keeps every token at least as large as the k-th largest (ties with it stay, as a threshold would). Its
    # distribution is normalised over the row in token order, so both ways of sorting see the same probabilities.
    if candidates:
        kth = scaled.amin(dim=-1, keepdim=True)  # [B, 1]: rows without top-k keep every token
        with_k = k < vocab
        if bool(with_k.any()):
            top = torch.topk(scaled, int(k[with_k].max()), dim=-1).values  # [B, max k]
            kth = torch.where(with_k[:, None], top.gather(1, (k.clamp(max=top.shape[1]) - 1)[:, None]), kth)
    else:
        ordered, order = torch.sort(scaled, dim=-1, descending=True, stable=True)  # [B, V] each
        kth = ordered.gather(1, (k - 1)[:, None])
    probs_row = scaled.masked_fill(scaled < kth, float("-inf")).softmax(dim=-1)  # [B, V]
    valid = None
    if candidates:
        found = _candidates(scaled, kth, probs_row, top_p)
        if found is None:  # a nucleus too large to find: sort the whole rows (the same kth, the same probabilities)
            ordered, order = torch.sort(scaled, dim=-1, descending=True, stable=True)
        else:
            ordered, order, valid = found  # [B, C] each
    probs = probs_row.gather(1, order)
    if valid is not None:
        probs = probs.masked_fill(~valid, 0.0)
    # top-p drops a token once the tokens before it already reach p; the first token always stays.
    before = probs.cumsum(dim=-1) - probs
    keep = (ordered >= kth) & (ordered > float("-inf")) & ~((before >= top_p[:, None]) & (top_p < 1.0)[:, None])
    if valid is not None:
        keep &= valid
    # The kept tokens compete with best_in_shard's score, the noise keyed by token id: a filter that keeps every
    # token draws what no filter does.
    score = logits.double().gather(1, order) / temperature[:, None].double() + gumbel_noise(keys, order)
    pick = score.masked_fill(~keep, float("-inf")).argmax(dim=-1)  # [B]
    return order.gather(1, pick[:, None]).squeeze(1)


_NUCLEUS_FIRST = 64  # candidates a top-p row starts from (x4 until they hold the nucleus)
_NUCLEUS_MAX = 4096  # beyond this many, sorting the whole row is cheaper than finding the nucleus's edge
_NUCLEUS_MARGIN = 0.01  # the candidates' probability must exceed top_p by this much (float32 sums in two orders)


def _candidates(scaled: torch.Tensor, kth: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The tokens each row can keep, sorted as ``torch.sort(..., stable=True)`` sorts the whole row (descending, ties
    by token id): ``(values [B, C], token ids [B, C], valid [B, C])``, C the most candidates of a row, shorter rows
    padded (not valid); None when a top-p row's nucleus may hold more than 4096 tokens (sort the rows then). A row's
    candidates are the tokens at least as large as its top-k threshold ``kth`` and, with top-p, as its m-th largest
    for the smallest m in 64, 256, 1024, 4096 whose tokens' probability (``probs``, the top-k distribution) exceeds
    top_p + 0.01: every later token already has p before it. Thresholds come from ``torch.topk``: 0.5-5 ms for 8
    rows of 49152 on one CPU core, against 30 ms to sort them and 22 ms for every token's noise."""
    vocab = scaled.shape[-1]
    thresh, need = kth, top_p < 1.0  # [B, 1], [B]
    m = _NUCLEUS_FIRST
    while bool(need.any()):
        if m > _NUCLEUS_MAX and m < vocab:
            return None
        m = min(m, vocab)
        t = torch.maximum(kth, torch.topk(scaled, m, dim=-1).values[:, -1:])  # [B, 1]
        mass = probs.masked_fill(scaled < t, 0.0).sum(dim=-1)  # [B]
        done = need & ((mass >= top_p + _NUCLEUS_MARGIN) | (t == kth).squeeze(1) | (m == vocab))
        thresh = torch.where(done[:, None], t, thresh)
        need = need & ~done
        m *= 4
    rows, ids = (scaled >= thresh).nonzero(as_tuple=True)  # row-major: ascending ids within a row
    counts = torch.bincount(rows, minlength=scaled.shape[0])  # [B]
    pos = torch.arange(rows.numel(), device=scaled.device) - (torch.cumsum(counts, 0) - counts)[rows]
    width = int(counts.max())
    values = torch.full((scaled.shape[0], width), float("-inf"), dtype=scaled.dtype, device=scaled.device)
    cand = torch.zeros((scaled.shape[0], width), dtype=torch.int64, device=scaled.device)
    valid = torch.zeros((scaled.shape[0], width), dtype=torch.bool, device=scaled.device)
    values[rows, pos], cand[rows, pos], valid[rows, pos] = scaled[rows, ids], ids, True
    ordered, at = torch.sort(values, dim=-1, descending=True, stable=True)
    return ordered, cand.gather(1, at), valid.gather(1, at)


def sample(logits: torch.Tensor, pieces: list[Piece]) -> list[int]:
    """``logits`` ``[S, vocab]`` (float32), one row per sampling piece in order; returns S token ids."""
    return sample_tensors(logits, SamplingTensors.build(pieces, logits.device)).tolist()
