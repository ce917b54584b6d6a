"""Built-in, deterministic CAN traffic simulator (can-train-and-test v1.5 layout).

Writes a small data set that looks like ``can-train-and-test/hcrl-sa`` so every kdkit
command works without a download::

    kdkit data simulate --out DIR --seed N

or from Python::

    from kdkit.simulate import simulate, ensure_synthetic
    root = simulate("runs/data/demo", seed=0)   # writes the layout, returns DIR
    root = ensure_synthetic(seed=0)             # cached under runs/data/synthetic-seed0

Model of the traffic: a vehicle is a seeded profile of 30-60 CAN IDs (ECUs), each with a
period of 10-1000 ms, small jitter, a DLC (mostly 8) and per-byte roles (constants,
rolling counters, checksums, sinusoid / random-walk signals, 16-bit signals). ``alpha``
and ``bravo`` are the known (training) vehicles; ``charlie`` is the unknown vehicle
whose IDs are almost disjoint from theirs. Attacks are injected in a few bursts per
recording and labelled 1: DoS (ID 000, zero payload, every ~0.3 ms), fuzzing (random
IDs 000-7FF, random payloads, every ~0.5 ms), gear / rpm spoofing (one legitimate ID,
one fixed payload, every ~1 ms) and malfunction (extra frames of a legitimate ID with
random payloads at that ID's own rate, interleaved with its normal frames, as in the
real hcrl-sa malfunction files). Like the real release, the attack-free files of
``train_01_attack_free`` appear byte-identical in ``train_02_with_attacks``.

The same seed always gives byte-identical files; everything is vectorized with numpy
(one loop per CAN ID and per attack burst, none per message).
"""
from __future__ import annotations

import gzip as _gzip
import hashlib
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["simulate", "default_synthetic_root", "ensure_synthetic", "LAYOUT", "HEADER"]


FORMAT_VERSION = 1


HEADER = b"timestamp,arbitration_id,data_field,attack\n"


START_S = 1_513_920_000  # epoch-like start of every recording (plus a per-file offset)


KNOWN_VEHICLES = ("alpha", "bravo")


UNKNOWN_VEHICLE = "charlie"


N_IDS = {"alpha": 45, "bravo": 32, "charlie": 52}


N_SHARED_UNKNOWN = 3  # IDs the unknown vehicle shares with the known ones


PERIODS_MS = np.array([10, 20, 50, 100, 200, 500, 1000])


PERIOD_P = np.array([0.30, 0.20, 0.20, 0.15, 0.07, 0.05, 0.03])


# attack type -> (injection interval in s or None = the target ID's period, burst length s)
ATTACKS = {"DoS": (0.3e-3, 0.3), "fuzzing": (0.5e-3, 0.5), "gear": (1e-3, 0.5),
           "rpm": (1e-3, 0.5), "malfunction": (None, 2.0)}


N_BURSTS = 3  # bursts per attack recording at scale=1.0


TRAIN, TEST = 1.0, 0.8  # recording length as a fraction of duration_s


# (folder, vehicle, attack type, length factor); file name = f"{attack}-{vehicle}.csv"
LAYOUT = (
    ("train_01_attack_free", "alpha", "attack-free", TRAIN),
    ("train_01_attack_free", "bravo", "attack-free", TRAIN),
    ("train_02_with_attacks", "alpha", "DoS", TRAIN),
    ("train_02_with_attacks", "bravo", "fuzzing", TRAIN),
    ("test_01_known_vehicle_known_attack", "bravo", "DoS", TEST),
    ("test_01_known_vehicle_known_attack", "alpha", "fuzzing", TEST),
    ("test_02_unknown_vehicle_known_attack", "charlie", "DoS", TEST),
    ("test_02_unknown_vehicle_known_attack", "charlie", "fuzzing", TEST),
    ("test_03_known_vehicle_unknown_attack", "alpha", "malfunction", TEST),
    ("test_03_known_vehicle_unknown_attack", "bravo", "malfunction", TEST),
    ("test_03_known_vehicle_unknown_attack", "alpha", "rpm", TEST),
    ("test_04_unknown_vehicle_unknown_attack", "charlie", "malfunction", TEST),
    ("test_04_unknown_vehicle_unknown_attack", "charlie", "gear", TEST),
)


DUPLICATE_INTO = "train_02_with_attacks"  # train_01 attack-free files are copied here


CONST, COUNTER, SINE, WALK, CHECKSUM, SIG16, SIG16_LO = range(7)


_HEX = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)


@dataclass
class _IdSpec:
    can_id: int
    period: float  # s
    jitter: float  # s, std of the normal jitter
    dlc: int
    roles: np.ndarray  # int8 [dlc]
    const: np.ndarray  # uint8 [8], constants / sine mid / nibble fill
    amp: np.ndarray  # float [8], sine amplitude
    amp16: float  # amplitude (counts) of the 16-bit signal in bytes 0-1
    sig_period: np.ndarray  # float [8], s
    nibble_counter: bool


def _rng(seed: int, *key: str | int) -> np.random.Generator:
    words = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in key]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def _vehicle_ids(seed: int) -> dict[str, np.ndarray]:
    """Draw the ID sets: alpha/bravo overlap partly, charlie is almost disjoint."""
    rng = _rng(seed, "ids")
    perm = rng.permutation(np.arange(1, 0x800))  # ID 000 is reserved for DoS
    na, nb, nc = N_IDS["alpha"], N_IDS["bravo"], N_IDS["charlie"]
    alpha = perm[:na]
    n_common = nb // 3
    bravo = np.concatenate([rng.choice(alpha, n_common, replace=False),
                            perm[na:na + nb - n_common]])
    known = np.union1d(alpha, bravo)
    start = na + nb - n_common
    charlie = np.concatenate([rng.choice(known, N_SHARED_UNKNOWN, replace=False),
                              perm[start:start + nc - N_SHARED_UNKNOWN]])
    return {"alpha": np.sort(alpha), "bravo": np.sort(bravo), "charlie": np.sort(charlie)}


def _profile(seed: int, name: str, ids: np.ndarray) -> list[_IdSpec]:
    """Seeded per-ID timing and payload model of one vehicle."""
    rng = _rng(seed, "profile", name)
    specs = []
    for can_id in ids:
        period = float(rng.choice(PERIODS_MS, p=PERIOD_P)) / 1000.0
        dlc = 8 if rng.random() < 0.75 else int(rng.integers(2, 8))
        roles = rng.choice([CONST, SINE, WALK], size=dlc, p=[0.55, 0.25, 0.2]).astype(np.int8)
        checksum = dlc >= 3 and rng.random() < 0.4
        if dlc >= 2 and rng.random() < 0.6:
            roles[dlc - 2 if checksum else dlc - 1] = COUNTER
        if dlc >= 4 and rng.random() < 0.3:
            roles[:2] = (SIG16, SIG16_LO)
        if checksum:
            roles[dlc - 1] = CHECKSUM
        amp = rng.uniform(5, 100, 8)
        const = np.where(rng.random(8) < 0.5, 0, rng.integers(0, 256, 8))
        padded = np.full(8, CONST, dtype=np.int8)
        padded[:dlc] = roles
        const = np.where(padded == SINE, rng.uniform(amp, 255 - amp), const)
        specs.append(_IdSpec(
            can_id=int(can_id), period=period,
            jitter=period * rng.uniform(0.002, 0.02), dlc=dlc, roles=roles,
            const=np.rint(const).astype(np.uint8), amp=amp, amp16=rng.uniform(500, 8000),
            sig_period=rng.uniform(1.0, 20.0, 8), nibble_counter=bool(rng.random() < 0.5)))
    return specs


def _payloads(spec: _IdSpec, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Payload bytes [n, 8] (zero past dlc) of one ID's frames sent at times t (s)."""
    n = len(t)
    k = np.arange(n, dtype=np.int64)
    pay = np.zeros((n, 8), dtype=np.uint8)
    for b, role in enumerate(spec.roles):
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * t / spec.sig_period[b] + phase)
        if role == CONST:
            pay[:, b] = spec.const[b]
        elif role == COUNTER:
            c = k + rng.integers(256)
            pay[:, b] = ((c % 16) << 4 | (spec.const[b] & 15)) if spec.nibble_counter else c % 256
        elif role == SINE:
            v = spec.const[b] + spec.amp[b] * wave + rng.normal(0, 0.4, n)
            pay[:, b] = np.clip(np.rint(v), 0, 255)
        elif role == WALK:
            steps = rng.integers(-1, 2, n) * (rng.random(n) < 0.3)
            x = (int(spec.const[b]) + np.cumsum(steps)) % 510  # reflect into 0..255
            pay[:, b] = np.where(x > 255, 510 - x, x)
        elif role == SIG16:
            mid = 9000 + 40 * int(spec.const[b])
            v = np.clip(np.rint(mid + spec.amp16 * wave), 0, 0xFFFF).astype(np.int64)
            pay[:, b], pay[:, b + 1] = v >> 8, v & 0xFF
    if spec.dlc and spec.roles[-1] == CHECKSUM:
        pay[:, spec.dlc - 1] = pay[:, :spec.dlc - 1].sum(axis=1, dtype=np.uint32) & 0xFF
    return pay


def _bursts(rng: np.random.Generator, duration: float, n: int, length: float):
    """n non-overlapping (start, stop) intervals, one in each n-th of the recording."""
    seg = duration / n
    lens = np.minimum(length * rng.uniform(0.7, 1.3, n), 0.6 * seg)
    starts = np.arange(n) * seg + 0.1 * seg + rng.random(n) * (0.85 * seg - lens)
    return list(zip(starts, starts + lens))


def _recording(seed: int, key: str, specs: list[_IdSpec], attack: str, duration: float,
               scale: float):
    """Frames of one recording in time order, plus (attack rows, target IDs)."""
    rng = _rng(seed, "recording", key)
    t_parts, id_parts, dlc_parts, pay_parts, lab_parts = [], [], [], [], []

    def add(t, can_id, dlc, pay, label):
        t_parts.append(t)
        id_parts.append(np.broadcast_to(np.asarray(can_id, np.uint32), t.shape))
        dlc_parts.append(np.broadcast_to(np.asarray(dlc, np.uint8), t.shape))
        pay_parts.append(pay)
        lab_parts.append(np.full(t.shape, label, np.uint8))

    for spec in specs:  # normal traffic, one loop per ID
        n = int(np.ceil(duration / spec.period))
        t = rng.uniform(0, spec.period) + np.arange(n) * spec.period
        t = t + rng.normal(0, spec.jitter, n)
        t = t[(t >= 0) & (t < duration)]
        add(t, spec.can_id, spec.dlc, _payloads(spec, t, rng), 0)

    targets: list[int] = []
    if attack != "attack-free":
        interval, length = ATTACKS[attack]
        by_id = {s.can_id: s for s in specs}
        if attack == "malfunction":  # one or two of the fastest legitimate IDs
            fastest = min(s.period for s in specs)
            fast = [s.can_id for s in specs if s.period <= fastest * 1.01]
            targets = sorted(int(c) for c in rng.choice(fast, min(2, len(fast)), replace=False))
        elif attack in ("gear", "rpm"):
            pool = [s.can_id for s in specs if s.period <= 0.05 and s.dlc >= 4]
            if attack == "rpm":
                pool = [c for c in pool if by_id[c].roles[0] == SIG16] or pool
            targets = [int(rng.choice(pool or [s.can_id for s in specs]))]
        fixed = rng.integers(0, 256, 8, dtype=np.uint8)
        n_bursts = max(1, int(round(N_BURSTS * scale)))
        for start, stop in _bursts(rng, duration, n_bursts, length):  # one loop per burst
            if attack == "malfunction":
                for spec in (by_id[c] for c in targets):
                    t = np.arange(start, stop, spec.period) + rng.uniform(0.05, 0.95) * spec.period
                    t = t + rng.normal(0, spec.jitter, len(t))
                    pay = rng.integers(0, 256, (len(t), 8), dtype=np.uint8)
                    pay[:, spec.dlc:] = 0
                    add(t, spec.can_id, spec.dlc, pay, 1)
                continue
            t = np.arange(start, stop, interval)
            t = t + rng.uniform(0, 0.2 * interval, len(t))
            if attack == "DoS":
                add(t, 0, 8, np.zeros((len(t), 8), np.uint8), 1)
            elif attack == "fuzzing":
                ids = rng.integers(0, 0x800, len(t)).astype(np.uint32)
                add(t, ids, 8, rng.integers(0, 256, (len(t), 8), dtype=np.uint8), 1)
            else:  # gear / rpm spoofing: one ID, one fixed payload
                spec = by_id[targets[0]]
                pay = np.tile(fixed, (len(t), 1))
                pay[:, spec.dlc:] = 0
                add(t, spec.can_id, spec.dlc, pay, 1)

    start_us = (START_S + int(rng.integers(0, 3600))) * 1_000_000
    t_us = start_us + np.rint(np.concatenate(t_parts) * 1e6).astype(np.int64)
    order = np.argsort(t_us, kind="stable")
    cols = (t_us, np.concatenate(id_parts), np.concatenate(dlc_parts),
            np.concatenate(pay_parts), np.concatenate(lab_parts))
    return tuple(c[order] for c in cols), targets


def _format_csv(t_us, can_id, dlc, payload, label) -> bytes:
    """CSV bytes (header included) built in a [rows, 41] character matrix, no row loop."""
    sec, usec = np.divmod(t_us, 1_000_000)
    if len(sec) and (sec.min() < 10**9 or sec.max() >= 10**10):
        raise ValueError("timestamps must have 10 integer digits")
    buf = np.empty((len(t_us), 41), dtype=np.uint8)
    for i in range(10):
        buf[:, 9 - i] = 48 + (sec // 10**i) % 10
    buf[:, 10] = ord(".")
    for i in range(6):
        buf[:, 16 - i] = 48 + (usec // 10**i) % 10
    buf[:, [17, 21, 38]] = ord(",")
    for i in range(3):
        buf[:, 20 - i] = _HEX[(can_id >> (4 * i)) & 15]
    buf[:, 22:38:2] = _HEX[payload >> 4]
    buf[:, 23:38:2] = _HEX[payload & 15]
    buf[:, 39] = 48 + label
    buf[:, 40] = ord("\n")
    keep = np.ones(buf.shape, dtype=bool)
    keep[:, 22:38] = np.arange(16)[None, :] < 2 * dlc.astype(np.int64)[:, None]
    return HEADER + buf[keep].tobytes()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def simulate_drive(path: str | os.PathLike, vehicle: str = "charlie", seed: int = 0, duration_s: float = 10.0,
                   attack: str = "attack-free", drive: str = "drive") -> Path:
    """Write one more recording of a simulated vehicle: e.g. a clean drive of the unknown vehicle
    ``charlie`` to adapt a model to it (``kdkit calibrate --adapt``), its test files untouched.

    Args:
        path: the CSV file to write (``.csv`` or ``.csv.gz``).
        vehicle: ``alpha``, ``bravo`` or ``charlie`` of the data set of the same ``seed``.
        seed: the data set's seed (the vehicles' profiles).
        duration_s: seconds of traffic.
        attack: ``attack-free`` or one of the simulator's attack types.
        drive: names the drive; other names give other noise and attack times. Default ``drive``.
    """
    ids = _vehicle_ids(seed)
    if vehicle not in ids:
        raise ValueError(f"vehicle {vehicle!r}: choose one of {sorted(ids)}")
    if attack != "attack-free" and attack not in ATTACKS:
        raise ValueError(f"attack {attack!r}: choose attack-free or one of {sorted(ATTACKS)}")
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    cols, _targets = _recording(seed, f"{drive}/{attack}-{vehicle}", _profile(seed, vehicle, ids[vehicle]), attack,
                                duration_s, 1.0)
    data = _format_csv(*cols)
    out = Path(path)
    if out.name.endswith(".gz"):
        data = _gzip.compress(data, compresslevel=6, mtime=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, data)
    return out


def simulate(out_dir: str | os.PathLike, seed: int = 0, duration_s: float = 10.0,
             scale: float = 1.0, gzip: bool = False) -> Path:
    """Write a synthetic can-train-and-test style data set.

    Args:
        out_dir: Folder to write (created if missing). It receives the six folders
            ``train_01_attack_free`` .. ``test_04_unknown_vehicle_unknown_attack``,
            ``README.txt`` and, written last, ``manifest.json``.
        seed: Seed of the vehicle profiles, attacks and noise. Defaults to 0. The same
            seed (and arguments) always gives byte-identical files.
        duration_s: Length of each training recording in seconds; test recordings are
            0.8x as long. Defaults to 10.0.
        scale: Multiplies every duration (and the number of attack bursts).
            Defaults to 1.0 (64-81k unique training messages and 12-25k per test file
            over seeds 0-3: the vehicles' ID sets and message rates depend on the seed).
        gzip: Write ``.csv.gz`` (reproducible, mtime 0) instead of ``.csv``.
            Defaults to False.

    Returns:
        The output folder as a ``Path``.
    """
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"scale {scale} and duration_s {duration_s}: both must be positive finite numbers")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():  # drop a previous run's files (only the ones it listed)
        try:
            for rel in json.loads(manifest_path.read_text()).get("files", {}):
                (out / rel).unlink(missing_ok=True)
        except (ValueError, OSError):
            pass
        manifest_path.unlink(missing_ok=True)
    ids = _vehicle_ids(seed)
    profiles = {name: _profile(seed, name, ids[name]) for name in ids}
    ext = ".csv.gz" if gzip else ".csv"
    files: dict[str, dict] = {}
    for folder, vehicle, attack, factor in LAYOUT:
        rel = f"{folder}/{attack}-{vehicle}{ext}"
        duration = duration_s * factor * scale
        cols, targets = _recording(seed, f"{folder}/{attack}-{vehicle}", profiles[vehicle],
                                   attack, duration, scale)
        data = _format_csv(*cols)
        if gzip:
            data = _gzip.compress(data, compresslevel=6, mtime=0)
        info = {"vehicle": vehicle, "known_vehicle": vehicle in KNOWN_VEHICLES,
                "attack_type": attack, "duration_s": round(duration, 6),
                "messages": int(len(cols[0])), "attacks": int(cols[4].sum()),
                "target_ids": [f"{t:03X}" for t in targets],
                "sha256": hashlib.sha256(data).hexdigest()}
        targets_rel = [rel]
        if folder == "train_01_attack_free":
            targets_rel.append(f"{DUPLICATE_INTO}/{attack}-{vehicle}{ext}")
        for r in targets_rel:
            (out / r).parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(out / r, data)
            files[r] = dict(info, duplicate_of=rel if r != rel else None)
    for folder in dict.fromkeys(f for f, *_ in LAYOUT):
        (out / folder).mkdir(exist_ok=True)
    vehicles = {name: {"known": name in KNOWN_VEHICLES,
                       "ids": [f"{s.can_id:03X}" for s in specs],
                       "periods_ms": [round(s.period * 1000, 3) for s in specs],
                       "dlc": [s.dlc for s in specs]} for name, specs in profiles.items()}
    n_train = sum(v["messages"] for k, v in files.items()
                  if k.startswith("train_") and v["duplicate_of"] is None)
    manifest = {"format": "can-train-and-test v1.5 (kdkit synthetic)",
                "generator": "kdkit.simulate", "version": FORMAT_VERSION, "seed": seed,
                "duration_s": duration_s, "scale": scale, "gzip": gzip, "files": files,
                "vehicles": vehicles, "unique_training_messages": n_train, "complete": True}
    readme = (
        f"Synthetic CAN traffic written by kdkit.simulate (seed={seed}, scale={scale}).\n"
        "Layout and CSV format follow can-train-and-test v1.5 (hcrl-sa):\n"
        "  timestamp,arbitration_id,data_field,attack\n"
        "Known vehicles: alpha, bravo; unknown vehicle: charlie (almost disjoint IDs).\n"
        "Known attacks: DoS, fuzzing; unknown attacks: malfunction, gear/rpm spoofing.\n"
        f"The attack-free files of train_01_attack_free are byte-identical copies in\n"
        f"{DUPLICATE_INTO} (as in the real release): deduplicate before training.\n"
        "Regenerate with: kdkit data simulate --out DIR --seed N\n")
    _write_atomic(out / "README.txt", readme.encode())
    _write_atomic(manifest_path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return out


def default_synthetic_root(seed: int = 0) -> Path:
    """Cache folder of the synthetic data set.

    Args:
        seed: Simulator seed. Defaults to 0.

    Returns:
        ``$KDKIT_SYNTHETIC_ROOT`` if set (a ``{seed}`` in it is replaced by the seed),
        else ``runs/data/synthetic-seed{seed}`` relative to the current directory.
    """
    env = os.environ.get("KDKIT_SYNTHETIC_ROOT")
    if env:
        return Path(env.replace("{seed}", str(seed))).expanduser()
    return Path("runs") / "data" / f"synthetic-seed{seed}"


def _is_complete(root: Path, seed: int, scale: float) -> bool:
    try:
        m = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (m.get("complete") is True and m.get("version") == FORMAT_VERSION
            and m.get("seed") == seed and m.get("scale") == scale
            and all((root / rel).is_file() for rel in m.get("files", {})))


def ensure_synthetic(seed: int = 0, scale: float = 1.0, root: str | os.PathLike | None = None) -> Path:
    """Return the synthetic data set folder, simulating it first if needed.

    Args:
        seed: Simulator seed. Defaults to 0.
        scale: Duration multiplier passed to ``simulate``. Defaults to 1.0.
        root: Folder to use. Defaults to ``default_synthetic_root(seed)``.

    Returns:
        The folder. Nothing is written when it already holds a complete manifest for
        this seed and scale whose files all exist.
    """
    root = Path(root) if root is not None else default_synthetic_root(seed)
    if not _is_complete(root, seed, scale):
        simulate(root, seed=seed, scale=scale)
    return root
