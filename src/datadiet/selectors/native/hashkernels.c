/* datadiet's hashing kernels in C: exact-dedup normalisation, MinHash shard signatures and
 * band keys, LSH bucket grouping, signature agreement of candidate pairs.
 *
 * Why C: these are the production hashing kernels. A command-line curate is a short process;
 * a small shared library loaded through ctypes costs a millisecond and a few hundred KiB (a JIT
 * such as numba costs about 0.5 CPU-seconds and 130 MiB of LLVM first), and ctypes releases the
 * GIL for the call, so Python threads run it on every core.
 *
 * Every function here must give the bits of the Python reference (pipeline/text.normalize for
 * exact dedup; minhash_shard_reference, candidate_pairs_reference and
 * minhash_clusters_reference in minhash.py), and the NumPy fallback gives the same;
 * tests/selectors/test_native_kernels.py compares them on real text and odd Unicode. Each works on a document range [lo, hi) so that the caller splits a batch
 * across threads; nothing here allocates shared state.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FMIX_MULT_1 0xFF51AFD7ED558CCDULL
#define FMIX_MULT_2 0xC4CEB9FE1A85EC53ULL
#define LEN_TAG 0x94D049BB133111EBULL
#define CASEFOLD_NEEDS_PYTHON 0xFFFFFFFFu
#define CODE_POINTS 0x110000

static inline uint64_t fmix64(uint64_t x) {
    x ^= x >> 33;
    x *= FMIX_MULT_1;
    x ^= x >> 33;
    x *= FMIX_MULT_2;
    x ^= x >> 33;
    return x;
}

/* The code point starting at buf[i] (well-formed UTF-8, as Arrow guarantees); sets *next. */
static inline int64_t decode(const uint8_t *buf, int64_t i, int64_t *next) {
    int64_t c0 = buf[i];
    if (c0 < 0x80) { *next = i + 1; return c0; }
    if (c0 < 0xE0) { *next = i + 2; return ((c0 & 0x1F) << 6) | (buf[i + 1] & 0x3F); }
    if (c0 < 0xF0) {
        *next = i + 3;
        return ((c0 & 0x0F) << 12) | ((int64_t)(buf[i + 1] & 0x3F) << 6) | (buf[i + 2] & 0x3F);
    }
    *next = i + 4;
    return ((c0 & 0x07) << 18) | ((int64_t)(buf[i + 1] & 0x3F) << 12)
         | ((int64_t)(buf[i + 2] & 0x3F) << 6) | (buf[i + 3] & 0x3F);
}

static inline int64_t encode(uint8_t *out, int64_t o, int64_t cp) {
    if (cp < 0x80) { out[o] = (uint8_t)cp; return o + 1; }
    if (cp < 0x800) {
        out[o] = (uint8_t)(0xC0 | (cp >> 6));
        out[o + 1] = (uint8_t)(0x80 | (cp & 0x3F));
        return o + 2;
    }
    if (cp < 0x10000) {
        out[o] = (uint8_t)(0xE0 | (cp >> 12));
        out[o + 1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[o + 2] = (uint8_t)(0x80 | (cp & 0x3F));
        return o + 3;
    }
    out[o] = (uint8_t)(0xF0 | (cp >> 18));
    out[o + 1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[o + 2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[o + 3] = (uint8_t)(0x80 | (cp & 0x3F));
    return o + 4;
}

static inline int is_word(const uint8_t *word, int64_t cp) {
    return cp >= 0 && cp < CODE_POINTS && word[cp];
}

/* One code point of normalize()'s output stream: case-folded (mode 0) and written as a word
 * character or a separator. Returns 0 when Python must fold the text (a fold the kernel
 * cannot write in place). */
static inline int emit_cp(int64_t cp, int fold_it, const uint32_t *fold, int64_t fold_size,
                          const uint8_t *word, uint8_t *out, int64_t *o, int64_t begin, int *gap) {
    if (fold_it && cp < fold_size) {
        uint32_t folded = fold[cp];
        if (folded == CASEFOLD_NEEDS_PYTHON) return 0;
        cp = folded;
    }
    if (is_word(word, cp)) {
        if (*gap && *o > begin) out[(*o)++] = 32;
        *gap = 0;
        *o = encode(out, *o, cp);
    } else {
        *gap = 1;
    }
    return 1;
}

/* The NFKC expansion of a class-1 code point (see native.nfkc_tables): binary search. */
static int64_t expansion_of(int64_t cp, const uint32_t *keys, int64_t n_keys) {
    int64_t lo = 0, hi = n_keys;
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if ((int64_t)keys[mid] < cp) lo = mid + 1; else hi = mid;
    }
    return lo < n_keys && (int64_t)keys[lo] == cp ? lo : -1;
}

/* normalize() (pipeline/text.py) of texts [lo, hi): text d is written inside its own input span
 * of out; lengths[d] = -1 where Python must normalise (mode 2, a fold the kernel cannot
 * write, or a character whose NFKC depends on its neighbours).
 *
 * With NFKC classes (nfkc_class != NULL; mode 0 only) the kernel also does NFKC: class 0
 * code points are their own NFKC in any context, class 1 code points are replaced by their
 * expansion (exp_keys/exp_offsets/exp_cps), class 2 sends the text to Python. An expansion
 * can be longer than its character, so a text whose output would run ahead of its input
 * goes to Python too. Without classes the caller has already sent every text that is not NFKC to
 * Python (mode 2), as before. */
void dd_normalize(const uint8_t *buf, const int64_t *starts, int64_t lo, int64_t hi,
                  const uint8_t *mode, const uint32_t *fold, int64_t fold_size,
                  const uint8_t *word, const uint8_t *ascii_word,
                  const uint8_t *nfkc_class, const uint32_t *exp_keys,
                  const int64_t *exp_offsets, const uint32_t *exp_cps, int64_t n_exp,
                  uint8_t *out, int64_t *lengths) {
    for (int64_t d = lo; d < hi; d++) {
        int64_t i = starts[d], end = starts[d + 1], begin = i, o = i;
        int gap = 0, ok = mode[d] != 2, fold_it = mode[d] == 0;
        int classes = nfkc_class != NULL && mode[d] == 0;
        while (ok && i < end) {
            uint8_t b0 = buf[i];
            if (b0 < 0x80) {
                uint8_t c = ascii_word[b0];
                i++;
                if (c) {
                    if (gap && o > begin) out[o++] = 32;
                    gap = 0;
                    out[o++] = c;
                } else {
                    gap = 1;
                }
                continue;
            }
            int64_t cp = decode(buf, i, &i);
            uint8_t cls = classes && cp < CODE_POINTS ? nfkc_class[cp] : 0;
            if (cls == 0) {
                ok = emit_cp(cp, fold_it, fold, fold_size, word, out, &o, begin, &gap);
            } else if (cls == 1) {
                int64_t e = expansion_of(cp, exp_keys, n_exp);
                if (e < 0) { ok = 0; break; }
                for (int64_t k = exp_offsets[e]; ok && k < exp_offsets[e + 1]; k++) {
                    if (o + 5 > end) { ok = 0; break; } /* never past the text's own span */
                    ok = emit_cp(exp_cps[k], fold_it, fold, fold_size, word, out, &o, begin, &gap);
                }
                /* Output must not run ahead of the input read (then every later write stays
                 * inside the span, as without expansions); an expansion that did goes to
                 * Python ("1/4" is 2 bytes, its "1 4" is 3). */
                if (o > i) ok = 0;
            } else {
                ok = 0;
            }
        }
        lengths[d] = ok ? o - begin : -1;
    }
}

/* found[d] = 1 where text d has a byte >= 0x80 (any_non_ascii)
 * or one of the two-byte UTF-8 needles. */
void dd_docs_with(const uint8_t *buf, const int64_t *offsets, int64_t lo, int64_t hi,
                  const uint8_t *needles, int64_t n_needles, int any_non_ascii, uint8_t *found) {
    for (int64_t d = lo; d < hi; d++) {
        found[d] = 0;
        int64_t end = offsets[d + 1];
        for (int64_t i = offsets[d]; i < end && !found[d]; i++) {
            if (buf[i] < 0x80) continue;
            if (any_non_ascii) { found[d] = 1; break; }
            for (int64_t k = 0; k < n_needles; k++)
                if (buf[i] == needles[2 * k] && i + 1 < end && buf[i + 1] == needles[2 * k + 1])
                    found[d] = 1;
        }
    }
}

/* One text's word n-gram hashes into shingles[], returns
 * how many. word_h needs room for one entry per byte of the text plus one. */
static int64_t text_shingles(const uint8_t *buf, int64_t i, int64_t end, const uint8_t *word,
                             const uint32_t *lower, int64_t lower_size, const uint8_t *ascii_word,
                             const uint64_t *mult, int64_t ngram, const uint64_t *pos,
                             uint64_t salt, uint64_t *word_h, uint32_t *shingles) {
    int64_t nw = 0;
    uint64_t h = 0, j = 0;
    while (i < end) {
        uint8_t b0 = buf[i];
        uint64_t c;
        if (b0 < 0x80) {
            c = ascii_word[b0];
            i++;
        } else {
            int64_t cp = decode(buf, i, &i);
            if (cp < lower_size) cp = lower[cp];
            c = is_word(word, cp) ? (uint64_t)cp : 0;
        }
        uint64_t is_w = c != 0;
        uint64_t mask = (uint64_t)0 - is_w;
        word_h[nw] = h + j * LEN_TAG; /* kept only if this character ends a word */
        nw += (j != 0) & (is_w == 0);
        h = (h + c * mult[j & 63]) & mask;
        j = (j + 1) & mask;
    }
    if (j != 0) word_h[nw++] = h + j * LEN_TAG;
    for (int64_t k = 0; k < nw; k++) word_h[k] = fmix64(word_h[k]);
    int64_t m = nw >= ngram ? nw - ngram + 1 : (nw < 1 ? nw : 1);
    for (int64_t s = 0; s < m; s++) {
        uint64_t acc = salt;
        int64_t span = nw - s < ngram ? nw - s : ngram;
        for (int64_t k = 0; k < span; k++) acc += word_h[s + k] * pos[k];
        shingles[s] = (uint32_t)(fmix64(acc) >> 32);
    }
    return m;
}

/* Fold shingles into a signature row, all permutations at once.
 * The permutation loop is what the compiler vectorises; clones for AVX2 / AVX-512 are picked
 * at load time by the CPU, so one build runs everywhere at the speed of the machine. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void min_into(const uint32_t *restrict shingles, int64_t count, const uint32_t *restrict a,
                     const uint32_t *restrict b, int64_t num_perm, uint32_t *restrict row) {
    for (int64_t s = 0; s < count; s++) {
        uint32_t x = shingles[s];
        for (int64_t k = 0; k < num_perm; k++) {
            uint32_t v = a[k] * x + b[k];
            row[k] = v < row[k] ? v : row[k];
        }
    }
}

/* minhash_shard_reference for texts [lo, hi): signature, band keys and shingle count of
 * each. sigs must arrive filled with 0xFFFFFFFF. Returns 0, or -1 if scratch memory failed. */
int dd_minhash_shard(const uint8_t *buf, const int64_t *doc_start, int64_t lo, int64_t hi,
                     const uint8_t *word, const uint32_t *lower, int64_t lower_size,
                     const uint8_t *ascii_word, const uint64_t *mult, int64_t ngram,
                     const uint64_t *pos, uint64_t salt, const uint32_t *a, const uint32_t *b,
                     int64_t num_perm, const uint64_t *band_mult, int64_t bands, int64_t rows,
                     uint64_t band_tag, uint32_t *sigs, uint64_t *keys, int64_t *counts) {
    int64_t longest = 0;
    for (int64_t d = lo; d < hi; d++)
        if (doc_start[d + 1] - doc_start[d] > longest) longest = doc_start[d + 1] - doc_start[d];
    uint64_t *word_h = malloc(sizeof(uint64_t) * (size_t)(longest + 2));
    uint32_t *shingles = malloc(sizeof(uint32_t) * (size_t)(longest + 1));
    if (!word_h || !shingles) { free(word_h); free(shingles); return -1; }
    for (int64_t d = lo; d < hi; d++) {
        int64_t cnt = text_shingles(buf, doc_start[d], doc_start[d + 1], word, lower, lower_size,
                                    ascii_word, mult, ngram, pos, salt, word_h, shingles);
        counts[d] = cnt;
        uint32_t *row = sigs + d * num_perm;
        min_into(shingles, cnt, a, b, num_perm, row);
        uint64_t *key = keys + d * bands;
        for (int64_t bnd = 0; bnd < bands; bnd++) {
            uint64_t acc = (uint64_t)bnd * band_tag;
            for (int64_t r = 0; r < rows; r++)
                acc += (uint64_t)row[bnd * rows + r] * band_mult[bnd * rows + r];
            key[bnd] = acc;
        }
    }
    free(word_h);
    free(shingles);
    return 0;
}

/* signatures_reference for texts [lo, hi) of flat shingle hashes (text d's are
 * hashes[offsets[d] : offsets[d + 1]]). sigs must arrive filled with 0xFFFFFFFF. */
void dd_signatures(const uint32_t *hashes, const int64_t *offsets, int64_t lo, int64_t hi,
                   const uint32_t *a, const uint32_t *b, int64_t num_perm, uint32_t *sigs) {
    for (int64_t d = lo; d < hi; d++)
        min_into(hashes + offsets[d], offsets[d + 1] - offsets[d], a, b, num_perm,
                 sigs + d * num_perm);
}

/* The fraction of equal signature slots of pairs [lo, hi). */
void dd_pair_jaccard(const uint32_t *sig, int64_t num_perm, const int64_t *pairs, int64_t lo,
                     int64_t hi, double *out) {
    for (int64_t p = lo; p < hi; p++) {
        const uint32_t *x = sig + pairs[2 * p] * num_perm, *y = sig + pairs[2 * p + 1] * num_perm;
        int64_t same = 0;
        for (int64_t k = 0; k < num_perm; k++) same += x[k] == y[k];
        out[p] = (double)same / (double)num_perm;
    }
}

/* Open-addressing set of pair codes (slots hold code + 1; 0 is empty): 1 if newly inserted. */
static int insert_code(uint64_t *table, uint64_t cap, uint64_t code) {
    uint64_t mask = cap - 1, stored = code + 1, slot = fmix64(stored) & mask;
    for (;;) {
        uint64_t held = table[slot];
        if (held == 0) { table[slot] = stored; return 1; }
        if (held == stored) return 0;
        slot = (slot + 1) & mask;
    }
}

/* One band's rows grouped by key: an open-addressing table of buckets, each a linked list of
 * row positions (t, an index into rows_idx) in increasing order.
 *
 * Memory is what bounds the in-process reduce at millions of rows, so positions are int32
 * (the Python wrapper refuses 2**31 rows and more) and the table holds 1.5 slots per row at
 * any size: 20 bytes a slot plus 8 a row, where int64 fields and a power-of-two table (up to
 * 4 slots a row) took up to 136. A slot comes from the key by a multiply-shift (Lemire's
 * fastrange), which needs no power of two. */
typedef struct {
    uint64_t cap;
    uint64_t *slot_key;
    int32_t *head, *tail, *size; /* per slot: first and last member, member count */
    int32_t *nxt;                /* per member: the next one in its bucket, or -1 */
    int32_t *used;               /* the slots in use, in first-seen order */
} Buckets;

static int buckets_init(Buckets *b, int64_t n) {
    b->cap = (uint64_t)n + (uint64_t)n / 2 + 16;
    b->slot_key = malloc(sizeof(uint64_t) * b->cap);
    b->head = malloc(sizeof(int32_t) * b->cap);
    b->tail = malloc(sizeof(int32_t) * b->cap);
    b->size = malloc(sizeof(int32_t) * b->cap);
    b->nxt = malloc(sizeof(int32_t) * (size_t)(n + 1));
    b->used = malloc(sizeof(int32_t) * (size_t)(n + 1));
    return b->slot_key && b->head && b->tail && b->size && b->nxt && b->used ? 0 : -1;
}

static void buckets_free(Buckets *b) {
    free(b->slot_key); free(b->head); free(b->tail); free(b->size); free(b->nxt); free(b->used);
}

/* Group rows_idx's rows by their key in `band` (O(n), no sort); returns the slots in use. */
static int64_t group_band(const uint64_t *keys, int64_t n_bands, const int64_t *rows_idx,
                          int64_t n, int64_t band, Buckets *b) {
    for (uint64_t s = 0; s < b->cap; s++) b->head[s] = -1;
    int64_t n_used = 0;
    for (int64_t t = 0; t < n; t++) {
        uint64_t k = keys[rows_idx[t] * n_bands + band];
        uint64_t slot = (uint64_t)(((unsigned __int128)fmix64(k) * b->cap) >> 64);
        while (b->head[slot] != -1 && b->slot_key[slot] != k)
            slot = slot + 1 == b->cap ? 0 : slot + 1;
        b->nxt[t] = -1;
        if (b->head[slot] == -1) {
            b->slot_key[slot] = k;
            b->head[slot] = b->tail[slot] = (int32_t)t;
            b->size[slot] = 1;
            b->used[n_used++] = (int32_t)slot;
        } else {
            b->nxt[b->tail[slot]] = (int32_t)t;
            b->tail[slot] = (int32_t)t;
            b->size[slot]++;
        }
    }
    return n_used;
}

/* candidate_pairs_reference, fast: per band, rows grouped by key in a hash table; each
 * bucket emits its pairs (all of them up to max_bucket members, else a star), each distinct
 * pair once, coded i * n_total + j. Returns the number of codes, *out (malloc'ed, freed with
 * dd_free) holds them; -1 if memory failed. */
int64_t dd_bucket_pairs(const uint64_t *keys, int64_t n_bands, const int64_t *rows_idx,
                        int64_t n, int all_pairs, int64_t max_bucket, int64_t n_total,
                        int64_t **out_codes) {
    uint64_t seen_cap = 16;
    while (seen_cap < (uint64_t)(4 * n)) seen_cap *= 2;
    Buckets table;
    int table_ok = buckets_init(&table, n) == 0;
    const int32_t *head = table.head, *size = table.size, *nxt = table.nxt, *used = table.used;
    uint64_t *seen = calloc(seen_cap, sizeof(uint64_t));
    int64_t out_cap = n > 16 ? n : 16, m = 0;
    int64_t *out = malloc(sizeof(int64_t) * (size_t)out_cap);
    int64_t result = -1;
    if (!table_ok || !seen || !out) goto done;
    for (int64_t band = 0; band < n_bands; band++) {
        int64_t n_used = group_band(keys, n_bands, rows_idx, n, band, &table);
        for (int64_t u = 0; u < n_used; u++) {
            int64_t slot = used[u];
            if (size[slot] < 2) continue;
            for (int64_t x = head[slot]; x != -1; x = nxt[x]) {
                for (int64_t y = nxt[x]; y != -1; y = nxt[y]) {
                    int64_t code = rows_idx[x] * n_total + rows_idx[y];
                    if (!insert_code(seen, seen_cap, (uint64_t)code)) continue;
                    if (m == out_cap) {
                        int64_t *grown = realloc(out, sizeof(int64_t) * (size_t)(2 * out_cap));
                        if (!grown) goto done;
                        out = grown;
                        out_cap *= 2;
                    }
                    out[m++] = code;
                    if ((uint64_t)(2 * m) > seen_cap) { /* keep the set at most half full */
                        uint64_t *bigger = calloc(2 * seen_cap, sizeof(uint64_t));
                        if (!bigger) goto done;
                        seen_cap *= 2;
                        for (int64_t q = 0; q < m; q++) insert_code(bigger, seen_cap, (uint64_t)out[q]);
                        free(seen);
                        seen = bigger;
                    }
                }
                if (!(all_pairs && size[slot] <= max_bucket)) break; /* a star */
            }
        }
    }
    result = m;
done:
    buckets_free(&table);
    free(seen);
    if (result < 0) { free(out); out = NULL; }
    *out_codes = out;
    return result;
}

/* Union-find root of x with path halving; roots are always a component's smallest row. */
static inline int64_t find_root(int64_t *parent, int64_t x) {
    while (parent[x] != x) {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    return x;
}

/* How a row met the others of its bucket in one band, for deciding in which band a pair
 * of rows is first emitted: all pairs of its bucket, or a star whose centre it is or is not. */
#define MET_ALL_PAIRS 0
#define MET_AS_CENTRE 1
#define MET_IN_STAR 2

/* The whole MinHash reduce in one pass, without materialising the pairs: per band, rows
 * grouped by key as in dd_bucket_pairs; each distinct pair (all pairs of buckets up to
 * max_bucket members, else a star; a star always without verify) is counted once, checked
 * against the threshold on the full signatures when verify is set, and merged by union-find
 * (the larger root under the smaller). Afterwards labels[i] is the smallest row of i's
 * component: exactly minhash.connected_components over the verified candidate_pairs.
 *
 * Distinct without a set of pairs: near copies share a bucket in most bands, so a pair comes
 * up again and again; it is handled in the first band that emits it. A pair met in band b is
 * new unless some earlier band put both rows in one bucket (equal keys) and emitted that
 * pair there, which the per-row, per-band `met` code says. Two rows' keys are two cache lines,
 * so the check costs a few comparisons where a hash set of millions of pairs costs a cache
 * miss per lookup.
 *
 * counts[0] = distinct candidate pairs, counts[1] = pairs merged (passing verification).
 * labels must arrive as 0..n_total-1. Returns 0, or -1 if memory failed. */
int dd_minhash_cluster(const uint64_t *keys, int64_t n_bands, const int64_t *rows_idx,
                       int64_t n, const uint32_t *sig, int64_t num_perm, int verify,
                       double threshold, int64_t max_bucket, int64_t n_total, int64_t *labels,
                       int64_t *counts) {
    Buckets table;
    int table_ok = buckets_init(&table, n) == 0;
    const int32_t *head = table.head, *size = table.size, *nxt = table.nxt, *used = table.used;
    uint8_t *met = malloc((size_t)(n + 1) * (size_t)n_bands); /* met[t * n_bands + band] */
    int64_t n_seen = 0, n_merged = 0;
    int result = -1;
    if (!table_ok || !met) goto done;
    for (int64_t band = 0; band < n_bands; band++) {
        int64_t n_used = group_band(keys, n_bands, rows_idx, n, band, &table);
        for (int64_t u = 0; u < n_used; u++) { /* how each row meets its bucket this band */
            int64_t slot = used[u];
            int star = !(verify && size[slot] <= max_bucket);
            for (int64_t x = head[slot]; x != -1; x = nxt[x])
                met[x * n_bands + band] = !star ? MET_ALL_PAIRS
                                        : x == head[slot] ? MET_AS_CENTRE : MET_IN_STAR;
        }
        for (int64_t u = 0; u < n_used; u++) {
            int64_t slot = used[u];
            if (size[slot] < 2) continue;
            for (int64_t x = head[slot]; x != -1; x = nxt[x]) {
                const uint64_t *kx = keys + rows_idx[x] * n_bands;
                const uint8_t *mx = met + x * n_bands;
                for (int64_t y = nxt[x]; y != -1; y = nxt[y]) {
                    const uint64_t *ky = keys + rows_idx[y] * n_bands;
                    const uint8_t *my = met + y * n_bands;
                    int seen_before = 0;
                    for (int64_t b2 = 0; b2 < band && !seen_before; b2++)
                        seen_before = kx[b2] == ky[b2] && (mx[b2] != MET_IN_STAR
                                                           || my[b2] == MET_AS_CENTRE);
                    if (seen_before) continue;
                    int64_t i = rows_idx[x], j = rows_idx[y];
                    n_seen++;
                    if (verify) {
                        const uint32_t *a = sig + i * num_perm, *b = sig + j * num_perm;
                        int64_t same = 0;
                        for (int64_t k = 0; k < num_perm; k++) same += a[k] == b[k];
                        if (!((double)same / (double)num_perm >= threshold)) continue;
                    }
                    n_merged++;
                    int64_t ri = find_root(labels, i), rj = find_root(labels, j);
                    if (ri < rj) labels[rj] = ri;
                    else if (rj < ri) labels[ri] = rj;
                }
                if (!(verify && size[slot] <= max_bucket)) break; /* a star */
            }
        }
    }
    for (int64_t i = 0; i < n_total; i++) labels[i] = find_root(labels, i);
    counts[0] = n_seen;
    counts[1] = n_merged;
    result = 0;
done:
    buckets_free(&table);
    free(met);
    return result;
}

void dd_free(void *p) { free(p); }

/* The ABI version the Python loader checks: bump it when a signature above changes. */
int dd_abi_version(void) { return 4; }
