/*
 * lstm_infer: run a recurrent stack saved from Python through the fastrnn C ABI (inference).
 *
 *   python save_model.py model/            # model.txt + weights.npy (+ x.npy, an example input)
 *   ./lstm_infer model/ model/x.npy out/ [lengths.npy]
 *
 * Files (the format save_model.py writes; .npy is NumPy's format, little-endian, C order):
 *   MODEL_DIR/model.txt    "key value" lines: cell (lstm | gru | rnn_tanh | rnn_relu),
 *                          input_size, hidden_size, num_layers, bidirectional (0/1), bias (0/1),
 *                          reset_after (0/1, GRU), dtype (float32 | float64)
 *   MODEL_DIR/weights.npy  every parameter flattened into one 1-D array, in PyTorch's order
 *                          (np.concatenate([p.ravel() for p in layer.params.values()]))
 *   X.npy                  input [T, N, C] of the model's dtype;  LENGTHS.npy: int64 [N]
 * Writes OUT_DIR/y.npy [T, N, D*H], OUT_DIR/h_n.npy [L*D, N, H] and, for LSTM, OUT_DIR/c_n.npy,
 * and prints a one-line summary. FASTRNN_NUM_THREADS sets the thread count (default 1).
 *
 * Build: make (pkg-config), cmake (find_package), or
 *   cc -std=c99 lstm_infer.c $(python -m fastrnn config --cflags --libs) -o lstm_infer
 */
#include <fastrnn/fastrnn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DIMS 8

typedef struct {
    char descr[8];          /* "<f4", "<f8" or "<i8" */
    int ndim;
    int64_t shape[MAX_DIMS];
    int64_t count;          /* elements */
    void* data;
} npy_array;

static void* read_file(const char* path, long* size) {
    FILE* f = fopen(path, "rb");
    void* buf = NULL;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (*size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)*size + 1);
        if (buf && fread(buf, 1, (size_t)*size, f) != (size_t)*size) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

/* Loads a C-order little-endian .npy file (format versions 1 to 3). Returns 0 on success. */
static int npy_load(const char* path, npy_array* a) {
    long size = 0;
    unsigned char* raw = read_file(path, &size);
    const char *h, *p;
    char* end;
    long header_len, offset;
    size_t esize;
    memset(a, 0, sizeof *a);
    if (!raw) {
        fprintf(stderr, "%s: cannot read\n", path);
        return -1;
    }
    if (size < 12 || memcmp(raw, "\x93NUMPY", 6) != 0) goto bad;
    header_len = (long)(raw[8] | raw[9] << 8);
    if (raw[6] != 1) header_len |= (long)raw[10] << 16 | (long)raw[11] << 24; /* versions 2 and 3 */
    offset = (raw[6] == 1 ? 10 : 12) + header_len;
    if (offset > size) goto bad;
    raw[offset - 1] = '\0'; /* the header ends with '\n' */
    h = (const char*)raw + (raw[6] == 1 ? 10 : 12);
    if (!(p = strstr(h, "'descr':")) || sscanf(p + 8, " '%7[^']'", a->descr) != 1) goto bad;
    if (!(p = strstr(h, "'fortran_order':")) || strncmp(p + 16, " False", 6) != 0) goto bad;
    if (!(p = strstr(h, "'shape':")) || !(p = strchr(p, '('))) goto bad;
    a->count = 1;
    for (++p; *p && *p != ')'; p = end) {
        while (*p == ' ' || *p == ',') ++p;
        if (*p == ')') break;
        if (a->ndim == MAX_DIMS) goto bad;
        a->shape[a->ndim] = strtoll(p, &end, 10);
        if (end == p || a->shape[a->ndim] < 0) goto bad;
        if (a->shape[a->ndim] > 0 && a->count > (int64_t)1 << 40) goto bad; /* no overflow below */
        a->count *= a->shape[a->ndim++];
    }
    esize = strcmp(a->descr, "<f4") == 0 ? 4 : (strcmp(a->descr, "<f8") == 0 || strcmp(a->descr, "<i8") == 0) ? 8 : 0;
    if (!esize || (long)(a->count * (int64_t)esize) > size - offset) goto bad;
    a->data = malloc(a->count * esize + 1);
    if (!a->data) goto bad;
    memcpy(a->data, raw + offset, a->count * esize);
    free(raw);
    return 0;
bad:
    fprintf(stderr, "%s: not a C-order .npy file of float32, float64 or int64\n", path);
    free(raw);
    return -1;
}

static int npy_save(const char* path, const char* descr, int ndim, const int64_t* shape, const void* data,
                    size_t esize) {
    char header[256], dims[160] = "";
    int64_t count = 1;
    int i, n, len;
    FILE* f;
    for (i = 0; i < ndim; ++i) {
        n = (int)strlen(dims);
        snprintf(dims + n, sizeof dims - n, "%lld,%s", (long long)shape[i], i + 1 < ndim ? " " : "");
        count *= shape[i];
    }
    len = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims);
    while ((10 + len + 1) % 64 != 0) header[len++] = ' '; /* data starts 64-byte aligned */
    header[len++] = '\n';
    f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "%s: cannot write\n", path);
        return -1;
    }
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc(len & 0xff, f);
    fputc(len >> 8, f);
    fwrite(header, 1, (size_t)len, f);
    fwrite(data, esize, (size_t)count, f);
    return fclose(f) == 0 ? 0 : -1;
}

/* Fills the descriptor's layer fields from MODEL_DIR/model.txt. */
static int read_model(const char* dir, fastrnn_desc* d) {
    char path[4096], key[64], value[64];
    long long v;
    FILE* f;
    snprintf(path, sizeof path, "%s/model.txt", dir);
    if (!(f = fopen(path, "r"))) {
        fprintf(stderr, "%s: cannot read\n", path);
        return -1;
    }
    while (fscanf(f, "%63s %63s", key, value) == 2) {
        v = strtoll(value, NULL, 10);
        if (!strcmp(key, "cell"))
            d->cell = !strcmp(value, "lstm")       ? FASTRNN_LSTM
                      : !strcmp(value, "gru")      ? FASTRNN_GRU
                      : !strcmp(value, "rnn_tanh") ? FASTRNN_RNN_TANH
                      : !strcmp(value, "rnn_relu") ? FASTRNN_RNN_RELU
                                                   : -1;
        else if (!strcmp(key, "dtype"))
            d->dtype = !strcmp(value, "float32") ? FASTRNN_FLOAT32 : !strcmp(value, "float64") ? FASTRNN_FLOAT64 : -1;
        else if (!strcmp(key, "input_size")) d->input_size = v;
        else if (!strcmp(key, "hidden_size")) d->hidden_size = v;
        else if (!strcmp(key, "num_layers")) d->num_layers = v;
        else if (!strcmp(key, "bidirectional")) d->num_directions = v ? 2 : 1;
        else if (!strcmp(key, "bias")) d->bias = (int32_t)v;
        else if (!strcmp(key, "reset_after")) d->reset_after = (int32_t)v;
    }
    fclose(f);
    return 0; /* fastrnn validates the values (and names a bad one) */
}

#define CHECK(call)                                                                                 \
    do {                                                                                            \
        fastrnn_status s_ = (call);                                                                 \
        if (s_ != FASTRNN_OK) {                                                                     \
            fprintf(stderr, "%s: %s\n", fastrnn_status_name(s_), fastrnn_last_error());             \
            goto done;                                                                              \
        }                                                                                           \
    } while (0)

int main(int argc, char** argv) {
    fastrnn_desc d;
    npy_array x, w, lengths;
    fastrnn_weights* layers = NULL;
    void *y = NULL, *h_n = NULL, *c_n = NULL;
    int64_t count, L, D, H, y_shape[3], s_shape[3], t;
    size_t esize;
    const char* descr;
    const char* threads = getenv("FASTRNN_NUM_THREADS");
    char path[4096];
    double checksum = 0;
    int rc = 1;

    memset(&x, 0, sizeof x);
    memset(&w, 0, sizeof w);
    memset(&lengths, 0, sizeof lengths);
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s MODEL_DIR X.npy OUT_DIR [LENGTHS.npy]\n", argv[0]);
        return 2;
    }
    CHECK(FASTRNN_CHECK_VERSION()); /* the loaded libfastrnn.so can serve this header */
    if (threads) CHECK(fastrnn_set_num_threads(atoi(threads)));

    CHECK(fastrnn_desc_init(&d));
    if (read_model(argv[1], &d) || npy_load(argv[2], &x)) goto done;
    descr = d.dtype == FASTRNN_FLOAT64 ? "<f8" : "<f4";
    esize = d.dtype == FASTRNN_FLOAT64 ? 8 : 4;
    if (x.ndim != 3 || strcmp(x.descr, descr) != 0 || x.shape[2] != d.input_size) {
        fprintf(stderr, "%s: expected %s data of shape (T, N, C=%lld)\n", argv[2], descr, (long long)d.input_size);
        goto done;
    }
    d.seq_len = x.shape[0];
    d.batch = x.shape[1];

    /* Weights: one flat array, split into per layer-direction pointers by the library. */
    snprintf(path, sizeof path, "%s/weights.npy", argv[1]);
    if (npy_load(path, &w)) goto done;
    if (strcmp(w.descr, descr) != 0) {
        fprintf(stderr, "%s: dtype %s, the model says %s\n", path, w.descr, descr);
        goto done;
    }
    CHECK(fastrnn_param_count(&d, &count));
    L = d.num_layers;
    D = d.num_directions;
    H = d.hidden_size;
    layers = malloc(sizeof *layers * (size_t)(L * D));
    if (!layers) goto done;
    CHECK(fastrnn_weights_from_flat(&d, w.data, w.count, layers, L * D)); /* checks w.count == count */

    if (argc == 5) {
        if (npy_load(argv[4], &lengths)) goto done;
        if (strcmp(lengths.descr, "<i8") != 0 || lengths.ndim != 1 || lengths.shape[0] != d.batch) {
            fprintf(stderr, "%s: expected int64 data of shape (N=%lld,)\n", argv[4], (long long)d.batch);
            goto done;
        }
    }

    y_shape[0] = d.seq_len, y_shape[1] = d.batch, y_shape[2] = D * H;
    s_shape[0] = L * D, s_shape[1] = d.batch, s_shape[2] = H;
    y = malloc(esize * (size_t)(y_shape[0] * y_shape[1] * y_shape[2]));
    h_n = malloc(esize * (size_t)(s_shape[0] * s_shape[1] * s_shape[2]));
    c_n = d.cell == FASTRNN_LSTM ? malloc(esize * (size_t)(s_shape[0] * s_shape[1] * s_shape[2])) : NULL;
    if (!y || !h_n || (d.cell == FASTRNN_LSTM && !c_n)) goto done;

    /* Inference: no initial state (zeros), no cache, no options. */
    CHECK(fastrnn_forward(&d, layers, x.data, NULL, NULL, lengths.data, y, h_n, c_n, NULL, 0, NULL));

    snprintf(path, sizeof path, "%s/y.npy", argv[3]);
    if (npy_save(path, descr, 3, y_shape, y, esize)) goto done;
    snprintf(path, sizeof path, "%s/h_n.npy", argv[3]);
    if (npy_save(path, descr, 3, s_shape, h_n, esize)) goto done;
    snprintf(path, sizeof path, "%s/c_n.npy", argv[3]);
    if (c_n && npy_save(path, descr, 3, s_shape, c_n, esize)) goto done;

    for (t = 0; t < y_shape[0] * y_shape[1] * y_shape[2]; ++t)
        checksum += esize == 8 ? ((const double*)y)[t] : ((const float*)y)[t];
    printf("fastrnn %s (isa %s, %d thread%s): y [%lld, %lld, %lld], sum(y) = %.6f\n", fastrnn_version_string(),
           fastrnn_get_isa(), fastrnn_get_num_threads(), fastrnn_get_num_threads() == 1 ? "" : "s",
           (long long)y_shape[0], (long long)y_shape[1], (long long)y_shape[2], checksum);
    rc = 0;
done:
    free(x.data);
    free(w.data);
    free(lengths.data);
    free(layers);
    free(y);
    free(h_n);
    free(c_n);
    return rc;
}
