"""Daniely's hierarchical label models (Daniely, "Deep Networks Learn Deep Hierarchical Models", ICML 2026,
arXiv 2601.00455): ``LabelHierarchy``, labels that are gates of fixed fan-in over the level below, and
``CircuitTeacher``, labels that are majorities of a random circuit's internal values (Theorem 3.4's teacher).
The paper's body was not available: gates, wiring, balance and the teacher's circuit are this library's
reconstruction from its abstract and table of contents (see the README).

Data layout
  nodes    inputs are nodes 0..d-1, labels nodes d..d+n_labels-1 (label j is node d + j and column j of y);
           a CircuitTeacher's hidden gates follow, from node d + n_labels on.
  levels   list of int64 tensors of label numbers (columns of y), level 1 first.
  parents  int64 [n_labels, fan_in]: parents[j, k] is the node that is label j's argument k.
  tables   node_table(v), int8 [2^fan_in] of +-1: entry t is node v's value when its argument k is +1 for
           exactly the bits k set in t (argument 0 the least significant bit), -1 for the others.
  ptf      node_polynomial(v), float64 [2^fan_in]: entry S is the coefficient of the monomial prod_{k in S} z_k
           (S a bit mask of arguments, same bit order), z_k = +-1 the argument values.
  samples  sample(n) -> x int8 [n, d], y int8 [n, n_labels], entries +-1.
  bits     input c of sample i is +1 when bit i % 32 is set in word (i // 32) % 4 of the Philox4x32-10
           block with counter (c, lo32(i // 128), hi32(i // 128), 2) and key (lo32(seed), hi32(seed)): a
           block holds one input of 128 consecutive samples; purpose 2 keeps these words apart from the
           RHM's (csrc/include/rhmfast/rhm_core.h). Sample i depends only on (hierarchy, seed, i), so any
           chunking gives the same samples.
  sampling bit-sliced: every node's values over 64 samples are one int64 word (bit b: sample 64w + b, set
           for +1), so a gate is a few word operations per 64 samples (a multiplexer tree over its truth
           table); the words are unpacked to +-1 int8 rows at the end.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import torch

from rhmfast._checks import check_choice, check_int, check_positive_int
from rhmfast.ops.rhm_sample import philox_uniform
from rhmfast.reference.philox import MASK32, PURPOSE_LABEL_HIERARCHY

GATES = ("parity", "majority", "junta", "ptf")
WIRINGS = ("random", "tree")
MAX_FAN_IN = 12  # tables and polynomials of 2^fan_in entries are enumerated at construction
BALANCE = 0.9  # "junta" and "ptf" tables: |mean over the 2^fan_in argument values| <= BALANCE
MAX_DRAWS = 1000  # draws of a level's random gates before its law is declared unbalanceable
MAX_HIERARCHY_DRAWS = 100  # draws of a whole hierarchy before it is declared unbalanceable
BALANCE_SAMPLES = 8192  # samples of a fixed stream on which every label is checked for balance
PTF_SLACK = 1e-9  # relative: the rescaled polynomial's float64 values on the cube stay >= 1
_BLOCK = 128  # samples per Philox block (4 lanes of 32 bits)
_CHUNK_WORDS = 1 << 22  # bound on the int64 words of a pass's gate intermediates

# Entry b: the eight +-1 int8 values that byte value b holds (least significant bit first), as one int64.
_BYTE_SIGNS = (((torch.arange(256)[:, None] >> torch.arange(8)) & 1) * 2 - 1).to(torch.int8).view(torch.int64)[:, 0]
# Steps of the 8x8 bit-matrix transpose of an int64 (Warren, Hacker's Delight 7-3): bit 8i + j <-> bit 8j + i.
_TRANSPOSE_8X8 = ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0))


@dataclasses.dataclass
class _Stage:
    """Gates computed together (one level of labels, or one layer of a circuit's hidden gates): consecutive
    nodes from ``first``, each reading nodes of earlier stages."""
    first: int
    parents: torch.Tensor  # int64 [m, fan_in] node numbers
    tables: torch.Tensor  # int8 [m, 2^fan_in] of +-1
    coefficients: torch.Tensor | None  # float64 [m, 2^fan_in] for "ptf" gates

    def __post_init__(self):
        # the tables as words of 64 equal bits (all set for +1), for bit-sliced evaluation
        self.masks = torch.where(self.tables > 0, -1, 0).to(torch.int64).unsqueeze(-1)


def _cube(fan_in: int) -> torch.Tensor:
    """int64 [2^fan_in, fan_in]: row t holds the argument values of table entry t."""
    return ((torch.arange(1 << fan_in)[:, None] >> torch.arange(fan_in)) & 1) * 2 - 1


def _evaluate(coefficients: torch.Tensor) -> torch.Tensor:
    """Values on the cube (table order) of multilinear polynomials [m, 2^f]: a Walsh-Hadamard transform,
    one argument at a time (z_k = -1 at bit 0 of the entry, +1 at bit 1)."""
    m, size = coefficients.shape
    f = size.bit_length() - 1
    values = coefficients.reshape([m] + [2] * f)
    for axis in range(1, f + 1):
        without, with_z = values.unbind(axis)
        values = torch.stack((without - with_z, without + with_z), axis)
    return values.reshape(m, size)


def _balanced(tables: torch.Tensor) -> torch.Tensor:
    return tables.double().mean(1).abs() <= BALANCE


def _draw_until(m: int, draw, accept, what: str) -> torch.Tensor:
    """m rows of ``draw(count)``, each redrawn until ``accept`` holds for it (at most MAX_DRAWS rounds)."""
    rows = draw(m)
    ok = accept(rows)
    for _ in range(MAX_DRAWS):
        if bool(ok.all()):
            return rows
        redo = (~ok).nonzero().squeeze(1)
        rows[redo] = draw(len(redo))
        ok[redo] = accept(rows[redo])
    raise ValueError(f"rhmfast: {what}: no balanced gate (|mean of its table| <= {BALANCE}) in {MAX_DRAWS} draws; "
                     "use another gate or fan_in")


def _gates(gate: str, fan_in: int, m: int, generator: torch.Generator, what: str):
    """(tables int8 [m, 2^fan_in], coefficients float64 or None) of m gates of one kind."""
    size = 1 << fan_in
    cube = _cube(fan_in)
    if gate == "parity":
        return cube.prod(1).to(torch.int8).expand(m, size).clone(), None
    if gate == "majority":
        return cube.sum(1).sign().to(torch.int8).expand(m, size).clone(), None
    if gate == "junta":
        tables = _draw_until(m, lambda count: torch.randint(0, 2, (count, size), generator=generator) * 2 - 1,
                             _balanced, what)
        return tables.to(torch.int8), None
    # "ptf": Gaussian coefficients, each degree carrying the same total variance (so the many middle-degree
    # monomials do not drown the low degrees), then rescaled to margin 1 on the cube.
    degree = (torch.arange(size)[:, None] >> torch.arange(fan_in) & 1).sum(1)
    scale = torch.tensor([math.comb(fan_in, int(k)) for k in degree], dtype=torch.float64).rsqrt()

    def accept(coefficients):
        values = _evaluate(coefficients)
        nonzero = values.abs().amin(1) > 1e-6 * values.abs().amax(1)
        return nonzero & _balanced(values.sign())

    coefficients = _draw_until(m, lambda count: torch.randn((count, size), dtype=torch.float64,
                                                            generator=generator) * scale, accept, what)
    coefficients *= (1 + PTF_SLACK) / _evaluate(coefficients).abs().amin(1, keepdim=True)
    values = _evaluate(coefficients)
    if not bool((values.abs() >= 1).all()):  # the margin, certified on all 2^fan_in argument values
        raise RuntimeError("rhmfast: a ptf gate lost its margin of 1 to rounding")
    return values.sign().to(torch.int8), coefficients


def _wire(first: int, count: int, m: int, fan_in: int, wiring: str, generator: torch.Generator) -> torch.Tensor:
    """int64 [m, fan_in] parents among nodes first..first+count-1: consecutive disjoint groups ("tree") or
    fan_in distinct nodes drawn uniformly for each gate ("random"), in increasing order."""
    if wiring == "tree":
        local = torch.arange(m * fan_in).view(m, fan_in)
    else:
        local = torch.stack([torch.randperm(count, generator=generator)[:fan_in].sort().values for _ in range(m)])
    return local + first


def _unpack(words: torch.Tensor) -> torch.Tensor:
    """Bit-sliced int64 [nodes, w] to int8 [64 * w, nodes] of +-1.

    Transposing the int8 output is slow in torch; the bits are transposed instead, in 8 x 8 blocks (8 nodes
    by 8 samples in an int64), so each sample's bytes of 8 nodes come out in sample order and expand to
    eight int8 at once. Byte views assume a little-endian CPU, as torch's CPUs are."""
    nodes, w = words.shape
    groups = -(-nodes // 8)
    words = torch.cat([words, words.new_zeros(8 * groups - nodes, w)])
    # block (g, sample byte q): byte j holds node 8g + j's bits of samples 8q .. 8q + 7
    blocks = words.view(torch.uint8).view(groups, 8, 8 * w).transpose(1, 2).contiguous().view(torch.int64)
    for shift, mask in _TRANSPOSE_8X8:
        swap = (blocks ^ (blocks >> shift)) & mask
        blocks = blocks ^ swap ^ (swap << shift)
    # now byte b of block (g, q) holds nodes 8g .. 8g + 7 of sample 8q + b
    octets = blocks.view(torch.uint8).view(groups, 64 * w).t().contiguous().view(-1).int()
    return _BYTE_SIGNS.index_select(0, octets).view(torch.int8).view(64 * w, 8 * groups)[:, :nodes]


class LabelHierarchy:
    """A hierarchy of ``sum(level_sizes)`` labels on inputs x uniform on {-1, +1}^d: level 1's labels are
    gates of ``fan_in`` inputs, level i's labels (i > 1) gates of ``fan_in`` labels of level i - 1.

    ``wiring``: ``"tree"`` reads consecutive disjoint groups (level i's label j reads nodes j*fan_in ..
    j*fan_in + fan_in - 1 of level i - 1; needs ``level_sizes[i] * fan_in`` <= the size of the level below),
    so a parity tree with d = fan_in^r and level_sizes fan_in^(r-1), ..., 1 computes the parity of all
    inputs at its top; ``"random"`` draws fan_in distinct parents of the level below per label.
    ``gate``: ``"parity"`` (product of the arguments), ``"majority"`` (sign of their sum; odd fan_in),
    ``"junta"`` (a uniformly random truth table), ``"ptf"`` (sign of a random multilinear polynomial of
    degree <= fan_in with Gaussian coefficients, each degree of equal total variance, rescaled so that
    |p| >= 1 on all 2^fan_in argument values -- checked by enumeration; ``node_polynomial`` returns it).
    Junta and ptf gates are redrawn until balanced: |mean of the table| <= 0.9, i.e. between 5% and 95% of
    the 2^fan_in entries are +1. With degree up to fan_in every Boolean function of its arguments is a ptf:
    the two random gates differ in their law, not their class. All construction randomness comes from
    ``seed`` (a torch.Generator).
    """

    def __init__(self, d: int, level_sizes, fan_in: int, gate: str = "parity", wiring: str = "random",
                 seed: int = 0):
        d = check_positive_int("d", d)
        if not isinstance(level_sizes, (list, tuple)) or not level_sizes:
            raise ValueError(f"rhmfast: level_sizes must be a non-empty list of ints >= 1, got {level_sizes!r}")
        sizes = [check_positive_int(f"level_sizes[{i}]", size) for i, size in enumerate(level_sizes)]
        fan_in = check_int("fan_in", fan_in, 1, MAX_FAN_IN)
        gate = check_choice("gate", gate, GATES)
        wiring = check_choice("wiring", wiring, WIRINGS)
        seed = check_int("seed", seed, 0, (1 << 64) - 1)
        if gate == "majority" and fan_in % 2 == 0:
            raise ValueError(f"rhmfast: fan_in must be odd for gate='majority' (no ties), got {fan_in}")
        generator = torch.Generator().manual_seed(seed)
        self.gate, self.wiring, self.fan_in, self.seed = gate, wiring, fan_in, seed
        # Composed gates can make a constant or nearly constant label (random wiring: a parity of parities
        # whose inputs cancel; random gates: a gate of skewed labels); such a hierarchy is redrawn, the
        # generator running on, so a hierarchy whose first draw is balanced stays as drawn.
        for _ in range(MAX_HIERARCHY_DRAWS):
            self._finish(d, self._draw_stages(d, sizes, fan_in, gate, wiring, generator), sizes)
            if self._labels_balanced():
                return
        raise ValueError(f"rhmfast: no hierarchy with every label balanced (|mean| <= {BALANCE} on "
                         f"{BALANCE_SAMPLES} samples) in {MAX_HIERARCHY_DRAWS} draws of its wiring and gates; use "
                         "more labels per level (level_sizes), another gate or wiring")

    @staticmethod
    def _draw_stages(d, sizes, fan_in, gate, wiring, generator) -> list[_Stage]:
        stages, first, below_first, below_name, below = [], d, 0, "d", d
        for i, size in enumerate(sizes):
            if fan_in > below:
                raise ValueError(f"rhmfast: fan_in must be <= {below_name} = {below} (level {i + 1} reads fan_in "
                                 f"distinct nodes of the level below), got {fan_in}")
            if wiring == "tree" and size * fan_in > below:
                raise ValueError(f"rhmfast: level_sizes[{i}] must be <= {below_name} // fan_in = {below // fan_in} "
                                 f"with wiring='tree' (disjoint groups of the level below), got {size}")
            parents = _wire(below_first, below, size, fan_in, wiring, generator)
            tables, coefficients = _gates(gate, fan_in, size, generator, f"level {i + 1} (gate={gate!r})")
            stages.append(_Stage(first, parents, tables, coefficients))
            below_first, below_name, below = first, f"level_sizes[{i}]", size
            first += size
        return stages

    def _labels_balanced(self) -> bool:
        """Every label's mean over BALANCE_SAMPLES samples of a fixed stream is within +-BALANCE."""
        _, y = self.sample(BALANCE_SAMPLES, seed=0)
        return bool((y.double().mean(0).abs() <= BALANCE).all())

    def _finish(self, d: int, stages: list[_Stage], level_sizes: list[int]) -> None:
        """The attributes and the samples per pass, from the stages (in evaluation order)."""
        self.d = d
        self.n_labels = sum(level_sizes)
        self.r = len(level_sizes)
        bounds = torch.tensor([0] + level_sizes).cumsum(0).tolist()
        self.levels = [torch.arange(lo, hi) for lo, hi in itertools.pairwise(bounds)]
        self.n_nodes = d + self.n_labels + sum(s.parents.shape[0] for s in stages
                                               if s.first >= d + self.n_labels)
        self._stages = stages
        label_stages = sorted((s for s in stages if s.first < d + self.n_labels), key=lambda s: s.first)
        self.parents = torch.cat([s.parents for s in label_stages])
        # The multiplexer tree of a stage holds m * 2^(fan_in - 1) words per 64 samples.
        widest = max(s.tables.numel() for s in stages) // 2
        self._chunk_blocks = max(1, min(128, _CHUNK_WORDS // (widest * _BLOCK // 64)))

    def _stage_of(self, node: int) -> tuple[_Stage, int]:
        node = check_int("node", node, self.d, self.n_nodes - 1)
        stage = next(s for s in self._stages if s.first <= node < s.first + s.parents.shape[0])
        return stage, node - stage.first

    def node_parents(self, node: int) -> torch.Tensor:
        """int64 [fan_in]: the nodes that gate node ``node`` (a label or a hidden gate) reads."""
        stage, row = self._stage_of(node)
        return stage.parents[row].clone()

    def node_table(self, node: int) -> torch.Tensor:
        """int8 [2^fan_in] of +-1: node ``node``'s truth table (entry order in the module docstring)."""
        stage, row = self._stage_of(node)
        return stage.tables[row].clone()

    def node_polynomial(self, node: int) -> torch.Tensor:
        """float64 [2^fan_in]: the multilinear polynomial (margin >= 1) whose sign is a "ptf" gate."""
        stage, row = self._stage_of(node)
        if stage.coefficients is None:
            raise ValueError(f"rhmfast: node {node} is not a 'ptf' gate: it has no polynomial")
        return stage.coefficients[row].clone()

    def gate_table(self, j: int) -> torch.Tensor:
        """int8 [2^fan_in] of +-1: label ``j``'s truth table over the values of ``parents[j]``."""
        return self.node_table(self.d + check_int("j", j, 0, self.n_labels - 1))

    def sample(self, n: int, *, seed: int = 0, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start .. start+n-1`` of stream ``seed``: ``(x int8 [n, d], y int8 [n, n_labels])``,
        entries +-1. Sample i depends only on (hierarchy, seed, i)."""
        n = check_int("n", n, 0)
        seed = check_int("seed", seed, 0, (1 << 64) - 1)
        start = check_int("start", start, 0)
        if start + n >= 1 << 63:
            raise ValueError(f"rhmfast: start + n must be < 2^63, got {start + n}")
        x = torch.empty(n, self.d, dtype=torch.int8)
        y = torch.empty(n, self.n_labels, dtype=torch.int8)
        first_block, end_block = start // _BLOCK, -(-(start + n) // _BLOCK)
        for block in range(first_block, end_block, self._chunk_blocks):
            blocks = min(self._chunk_blocks, end_block - block)
            values = self._node_words(blocks, block, seed)
            # the rows of this pass's samples that the call asked for
            lo, hi = max(start, block * _BLOCK), min(start + n, (block + blocks) * _BLOCK)
            rows = slice(lo - block * _BLOCK, hi - block * _BLOCK)
            x[lo - start:hi - start] = _unpack(values[:self.d])[rows]
            y[lo - start:hi - start] = _unpack(values[self.d:self.d + self.n_labels])[rows]
        return x, y

    def _node_words(self, blocks: int, first_block: int, seed: int) -> torch.Tensor:
        """int64 [n_nodes, 2 * blocks]: every node's values on samples 128 * first_block + (0 .. 128 * blocks - 1),
        bit-sliced (bit b of word w: sample 64w + b, set for +1)."""
        values = torch.empty(self.n_nodes, 2 * blocks, dtype=torch.int64)
        group = torch.arange(first_block, first_block + blocks, dtype=torch.int64)
        counter = torch.empty(self.d, blocks, 4, dtype=torch.int64)
        counter[:, :, 0] = torch.arange(self.d)[:, None]
        counter[:, :, 1] = group & MASK32
        counter[:, :, 2] = group >> 32
        counter[:, :, 3] = PURPOSE_LABEL_HIERARCHY
        lanes = philox_uniform(counter.view(-1, 4), seed).view(self.d, blocks, 2, 2)
        values[:self.d] = (lanes[..., 0] | lanes[..., 1] << 32).view(self.d, 2 * blocks)
        for stage in self._stages:
            m, f = stage.parents.shape
            arguments = values.index_select(0, stage.parents.flatten()).view(m, f, 1, -1)
            # multiplexer tree: argument k chooses between table entries differing in bit k, lowest bit first
            choice = stage.masks
            for k in range(f):
                low, high = choice[:, 0::2], choice[:, 1::2]
                choice = low ^ (arguments[:, k] & (low ^ high))
            values[stage.first:stage.first + m] = choice[:, 0]
        return values

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(d={self.d}, levels={[len(level) for level in self.levels]}, "
                f"fan_in={self.fan_in}, gate={self.gate!r}, wiring={self.wiring!r}, seed={self.seed})")


class CircuitTeacher(LabelHierarchy):
    """Theorem 3.4's teacher, as this library reconstructs it: a random layered circuit on x uniform on
    {-1, +1}^d -- ``depth`` layers of ``width`` gates of kind ``gate`` (see LabelHierarchy), layer 1 reading
    ``fan_in`` distinct random inputs, layer t > 1 ``fan_in`` distinct random gates of layer t - 1 -- whose
    labels are revealed hints: level t holds ``n_labels_per_layer`` labels, each the majority of ``k`` (odd)
    distinct random gates of layer t. The gates are hidden nodes d + n_labels + (t - 1) * width + g
    (``gate_levels``); ``parents`` of a label are hidden nodes, and ``sample`` returns only the labels.
    The paper says only that labels which are random majorities of a circuit's internal values form a
    label hierarchy; gate kind, uniform random wiring and the per-layer label count are our choices.
    """

    def __init__(self, d: int, depth: int, width: int, fan_in: int, n_labels_per_layer: int, k: int,
                 seed: int = 0, gate: str = "majority"):
        # LabelHierarchy.__init__ builds level-on-level wiring; the circuit builds its own stages.
        d = check_positive_int("d", d)
        depth = check_positive_int("depth", depth)
        width = check_positive_int("width", width)
        fan_in = check_int("fan_in", fan_in, 1, min(MAX_FAN_IN, d, width) if depth > 1 else min(MAX_FAN_IN, d))
        n_labels_per_layer = check_positive_int("n_labels_per_layer", n_labels_per_layer)
        k = check_int("k", k, 1, min(MAX_FAN_IN, width))
        if k % 2 == 0:
            raise ValueError(f"rhmfast: k must be odd (a label is a majority of k gates, no ties), got {k}")
        gate = check_choice("gate", gate, GATES)
        seed = check_int("seed", seed, 0, (1 << 64) - 1)
        if gate == "majority" and fan_in % 2 == 0:
            raise ValueError(f"rhmfast: fan_in must be odd for gate='majority' (no ties), got {fan_in}")
        generator = torch.Generator().manual_seed(seed)
        n_labels = depth * n_labels_per_layer
        stages, below_first, below = [], 0, d
        for t in range(depth):
            gates_first = d + n_labels + t * width
            parents = _wire(below_first, below, width, fan_in, "random", generator)
            tables, coefficients = _gates(gate, fan_in, width, generator, f"layer {t + 1} (gate={gate!r})")
            stages.append(_Stage(gates_first, parents, tables, coefficients))
            parents = _wire(gates_first, width, n_labels_per_layer, k, "random", generator)
            tables, _ = _gates("majority", k, n_labels_per_layer, generator, f"labels of layer {t + 1}")
            stages.append(_Stage(d + t * n_labels_per_layer, parents, tables, None))
            below_first, below = gates_first, width
        self.gate, self.wiring, self.fan_in, self.seed = gate, "random", fan_in, seed
        self.depth, self.width, self.k = depth, width, k
        self._finish(d, stages, [n_labels_per_layer] * depth)
        self.gate_levels = [torch.arange(d + n_labels + t * width, d + n_labels + (t + 1) * width)
                            for t in range(depth)]

    def __repr__(self) -> str:
        return (f"CircuitTeacher(d={self.d}, depth={self.depth}, width={self.width}, fan_in={self.fan_in}, "
                f"n_labels_per_layer={len(self.levels[0])}, k={self.k}, seed={self.seed}, gate={self.gate!r})")
