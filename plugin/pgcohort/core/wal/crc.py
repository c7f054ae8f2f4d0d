"""CRC-32C as PostgreSQL's ``pg_crc32c`` computes it, at C speed from pure Python (whole-integer folding)."""

from __future__ import annotations

# # PostgreSQL's pg_crc32c is CRC-32C (Castagnoli): reflected polynomial 0x82F63B78. Instead of
# a table walk byte by byte (the interpreter's loop is the cost, ~10 MB/s), the message is
# turned into one integer and reduced modulo the polynomial with a few whole-integer shifts
# and XORs, which run in C: reflecting every byte (``bytes.translate``) makes the message
# an ordinary GF(2) polynomial M, and the running CRC of M from register ``crc`` is
# reflect32((reflect32(crc)·x^n + M·x^32) mod P). The reduction folds the top half H of
# V = H·x^k + L onto the bottom: V ≡ H·(x^k mod P) + L, one shift-and-XOR per set bit of
# the 32-bit constant x^k mod P (k is chosen near the middle, with few set bits), until 96
# bits are left; eight byte tables finish it.

_CRC_POLY = 0x11EDC6F41  # x^32 + x^28 + x^27 + ... + 1, the unreflected form of 0x82F63B78
_BITREV = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_CRC_CHUNK = 64 << 10  # integers of this size are where the folding is fastest


def _mulmod(a: int, b: int) -> int:
    """a·b mod P for polynomials a, b of degree < 32."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
        if a >> 32:
            a ^= _CRC_POLY
    return r


def _xpow(k: int) -> int:
    """x^k mod P."""
    r, base = 1, 2
    while k:
        if k & 1:
            r = _mulmod(r, base)
        base = _mulmod(base, base)
        k >>= 1
    return r


def _bits(c: int) -> tuple[int, ...]:
    return tuple(i for i in range(32) if c >> i & 1)


def _fold_at(target: int, window: int) -> tuple[int, tuple[int, ...]]:
    """The split point k in [target - window, target] whose x^k mod P has the fewest set bits, and those bits."""
    k = max(33, target - window)
    c = _xpow(k)
    best_k, best_c = k, c
    while k < target:
        k += 1
        c <<= 1
        if c >> 32:
            c ^= _CRC_POLY
        if c.bit_count() < best_c.bit_count():
            best_k, best_c = k, c
    return best_k, _bits(best_c)


def _small_folds() -> list[tuple[int, tuple[int, ...]]]:
    """For bit lengths up to 4,111 (records up to ~500 bytes, most of them), by eighths: (k, bits of x^k mod P)."""
    powers = [1]
    for _ in range(2068):
        c = powers[-1] << 1
        powers.append(c ^ _CRC_POLY if c >> 32 else c)
    folds: list[tuple[int, tuple[int, ...]]] = [(0, ())] * 12
    for q in range(12, 514):
        target = ((q << 3) + 32) // 2
        k = min(range(max(33, target - 16), target + 1), key=lambda k: powers[k].bit_count())
        folds.append((k, _bits(powers[k])))
    return folds


_FOLDS_SMALL = _small_folds()
_FOLDS_LARGE: dict[int, tuple[int, tuple[int, ...]]] = {}  # longer ones by 512ths, as they are met


def _reduce_table(shift: int) -> list[int]:
    """(i · x^(32 + shift)) mod P for every byte i."""
    unit = [_xpow(32 + shift + bit) for bit in range(8)]
    table = [0] * 256
    for i in range(1, 256):
        low = i & -i
        table[i] = table[i ^ low] ^ unit[low.bit_length() - 1]
    return table


_R0, _R1, _R2, _R3, _R4, _R5, _R6, _R7 = (_reduce_table(8 * q) for q in range(8))


def _crc32c_chunk(data: bytes, crc: int) -> int:
    n = len(data) << 3
    v = (int.from_bytes(crc.to_bytes(4, "little").translate(_BITREV), "big") << n) ^ (
        int.from_bytes(data.translate(_BITREV), "big") << 32
    )
    b = v.bit_length()
    while b > 4104:
        q = b >> 9
        fold = _FOLDS_LARGE.get(q)
        if fold is None:
            fold = _FOLDS_LARGE[q] = _fold_at(((q << 9) + 32) // 2, 64)
        k, bits = fold
        h = v >> k
        v &= (1 << k) - 1
        for s in bits:
            v ^= h << s
        b = v.bit_length()
    while b > 96:
        k, bits = _FOLDS_SMALL[b >> 3]
        h = v >> k
        v &= (1 << k) - 1
        for s in bits:
            v ^= h << s
        b = v.bit_length()
    if b > 32:
        v = (
            (v & 0xFFFFFFFF)
            ^ _R0[(v >> 32) & 255]
            ^ _R1[(v >> 40) & 255]
            ^ _R2[(v >> 48) & 255]
            ^ _R3[(v >> 56) & 255]
            ^ _R4[(v >> 64) & 255]
            ^ _R5[(v >> 72) & 255]
            ^ _R6[(v >> 80) & 255]
            ^ _R7[v >> 88]
        )
    return int.from_bytes(v.to_bytes(4, "big").translate(_BITREV), "little")


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """The running CRC-32C of ``data`` from register ``crc``, not finalized (PostgreSQL's COMP_CRC32C).

    ``crc32c(b"123456789") ^ 0xFFFFFFFF == 0xE3069283``; ``crc32c(b, crc32c(a)) == crc32c(a + b)``.
    """
    if not 0 <= crc <= 0xFFFFFFFF:
        raise ValueError(f"a CRC-32C register holds 32 bits, not {crc}")
    if len(data) <= _CRC_CHUNK:
        return _crc32c_chunk(bytes(data), crc)
    for at in range(0, len(data), _CRC_CHUNK):
        crc = _crc32c_chunk(bytes(data[at : at + _CRC_CHUNK]), crc)
    return crc
