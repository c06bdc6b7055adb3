/* Resident Metric3D runner: load one .tflite with LiteRT once, serve depth over a socket.
 *
 * Why resident: GPU compilation takes seconds on the phone and a run tens of milliseconds,
 * so the model is compiled once and each request only moves one uint8 image in and one
 * depth map out. The same source builds for Android arm64 and the host (x86-64); the
 * protocol is documented in device/PROTOCOL.md and spoken by device/protocol.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "litert_api.h"

#ifndef RUNNER_VERSION
#error "build with -DRUNNER_VERSION=\"x.y.z\" (device/build.py takes it from device/protocol.py)"
#endif

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the wire format is little-endian");

#if defined(__ANDROID__)
#define RUNNER_PLATFORM "android-arm64"
#else
#define RUNNER_PLATFORM "linux-x86_64"
#endif

enum { EXIT_ARGS = 2, EXIT_MODEL = 3, EXIT_SOCKET = 4 };

enum {
    MSG_HELLO = 0x01, MSG_PING = 0x02, MSG_INFO = 0x03, MSG_INFER = 0x04, MSG_QUIT = 0x05,
    MSG_ERROR = 0xFF, REPLY_BIT = 0x80, FLAG_F16 = 0x01,
};
enum {
    ERR_BAD_MAGIC = 1, ERR_UNKNOWN_TYPE, ERR_TOO_LARGE, ERR_BAD_LENGTH, ERR_VERSION_MISMATCH,
    ERR_BAD_TOKEN, ERR_MODEL_MISMATCH, ERR_NOT_AUTHENTICATED, ERR_INFERENCE_FAILED,
    ERR_BAD_REQUEST, ERR_TIMEOUT,
};
enum { ACCEL_CPU = 1, ACCEL_GPU_OPENCL = 2, ACCEL_GPU_OPENGL = 3, ACCEL_GPU_WEBGPU = 4 };
enum { PREC_NA = 0, PREC_FP16 = 1, PREC_FP32 = 2, PREC_FP16ACC32 = 3 };
enum { DTYPE_F32 = 1, DTYPE_F16 = 10 };

#define HEADER_SIZE 16
#define HELLO_SIZE 128
#define HELLO_REPLY_SIZE 80
#define INFER_REPLY_HEAD 32
#define MAX_SMALL_PAYLOAD 256
/* Clients wait here while another one is served; one that still finds it full retries until its
 * own deadline (device/protocol.py connect_socket). */
#define LISTEN_BACKLOG 64
static const unsigned char MAGIC[4] = {'M', '3', 'D', 'R'};

/* ---------------------------------------------------------------- logging */

static void log_msg(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("metric3d-runner: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Errors sent to clients are logged at most LOG_BURST times per LOG_WINDOW_MS; the rest are
 * counted and reported in one line when the next window opens, so a client that reconnects
 * with a wrong token in a loop cannot fill the phone's storage with log lines. */
#define LOG_BURST 10
#define LOG_WINDOW_MS 10000.0
static double g_log_window_start = -1e18;
static unsigned g_log_in_window, g_log_dropped;

static int log_allowed(void) {
    double t = now_ms();
    if (t - g_log_window_start >= LOG_WINDOW_MS) {
        if (g_log_dropped) log_msg("%u more client errors in the last %.0f s were not logged", g_log_dropped,
                                   (t - g_log_window_start) / 1e3);
        g_log_window_start = t;
        g_log_in_window = 0;
        g_log_dropped = 0;
    }
    if (g_log_in_window < LOG_BURST) {
        g_log_in_window++;
        return 1;
    }
    g_log_dropped++;
    return 0;
}

/* ---------------------------------------------------------------- sha256 (FIPS 180-4) */

typedef struct {
    uint32_t h[8];
    uint64_t total;
    unsigned char block[64];
    size_t used;
} Sha256;

static const uint32_t SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(Sha256 *s, const unsigned char *p) {
    uint32_t w[64], v[8];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(v, s->h, sizeof v);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = v[7] + (rotr(v[4], 6) ^ rotr(v[4], 11) ^ rotr(v[4], 25)) + ((v[4] & v[5]) ^ (~v[4] & v[6])) +
                      SHA_K[i] + w[i];
        uint32_t t2 = (rotr(v[0], 2) ^ rotr(v[0], 13) ^ rotr(v[0], 22)) + ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof v[0]);
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) s->h[i] += v[i];
}

static void sha256_init(Sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->total = 0;
    s->used = 0;
}

static void sha256_update(Sha256 *s, const unsigned char *p, size_t n) {
    s->total += n;
    while (n > 0) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->block + s->used, p, take);
        s->used += take;
        p += take;
        n -= take;
        if (s->used == 64) {
            sha256_block(s, s->block);
            s->used = 0;
        }
    }
}

static void sha256_final(Sha256 *s, unsigned char out[32]) {
    uint64_t bits = s->total * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (s->used < 56 ? 56 : 120) - s->used;
    for (int i = 0; i < 8; i++) pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(s, pad, padlen + 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(s->h[i] >> (24 - 8 * j));
}

static int sha256_file(const char *path, unsigned char out[32], long long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    Sha256 s;
    sha256_init(&s);
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) sha256_update(&s, buf, n);
    int failed = ferror(f);
    fclose(f);
    if (failed) return -1;
    *size = (long long)s.total;
    sha256_final(&s, out);
    return 0;
}

static void hex_encode(const unsigned char *p, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

/* ---------------------------------------------------------------- arguments */

typedef struct {
    const char *model;
    const char *socket_spec;
    const char *token_file;
    char token[65];
    const char *libdir;
    const char *litert_lib;
    int want_gpu;
    int precision;
    float mean[3], std[3];
    int threads;
    int io_timeout_ms;
} Args;

static int valid_value(const char *v) {
    if (!*v) return 0;
    for (const char *p = v; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("_./:,+-", *p)))
            return 0;
    return 1;
}

static int parse_triple(const char *v, float out[3]) {
    char *end;
    for (int i = 0; i < 3; i++) {
        errno = 0;
        out[i] = strtof(v, &end);
        if (end == v || errno || !isfinite(out[i])) return -1;
        if (i < 2 && *end != ',') return -1;
        v = end + (i < 2);
    }
    return *end ? -1 : 0;
}

static int parse_int(const char *v, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (*end || errno || n < lo || n > hi) return -1;
    *out = (int)n;
    return 0;
}

static int fail_arg(const char *key, const char *value, const char *why) {
    log_msg("bad argument %s=%s: %s", key, value, why);
    return -1;
}

static int parse_args(int argc, char **argv, Args *a) {
    static const float mean0[3] = {123.675f, 116.28f, 103.53f}, std0[3] = {58.395f, 57.12f, 57.375f};
    memset(a, 0, sizeof *a);
    a->want_gpu = 1;
    a->precision = PREC_FP16ACC32;
    a->io_timeout_ms = 5000;
    memcpy(a->mean, mean0, sizeof mean0);
    memcpy(a->std, std0, sizeof std0);
    if (argc < 2) {
        log_msg("usage: runner VERSION model=PATH socket=SPEC token_file=PATH [key=value ...] (see device/PROTOCOL.md)");
        return -1;
    }
    if (strcmp(argv[1], RUNNER_VERSION) != 0) {
        log_msg("version mismatch: the client expects runner %s but this runner is %s; push the matching build",
                argv[1], RUNNER_VERSION);
        return -1;
    }
    unsigned seen = 0;
    static const char *const keys[] = {"model", "socket", "token_file", "accelerator", "precision", "mean",
                                       "std", "threads", "io_timeout_ms", "libdir", "litert_lib"};
    for (int i = 2; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        if (!eq) return fail_arg(argv[i], "", "expected key=value");
        char k[32];
        snprintf(k, sizeof k, "%.*s", (int)(eq - argv[i]), argv[i]);
        const char *v = eq + 1;
        int idx = -1;
        for (int j = 0; j < (int)(sizeof keys / sizeof keys[0]); j++)
            if ((size_t)(eq - argv[i]) == strlen(keys[j]) && strncmp(argv[i], keys[j], strlen(keys[j])) == 0) idx = j;
        if (idx < 0) return fail_arg(k, v, "unknown key");
        if (seen & (1u << idx)) return fail_arg(k, v, "given twice");
        seen |= 1u << idx;
        if (!valid_value(v)) return fail_arg(k, v, "only letters, digits and _ . / : , + - are allowed");
        if (idx == 0) a->model = v;
        else if (idx == 1) a->socket_spec = v;
        else if (idx == 2) a->token_file = v;
        else if (idx == 3) {
            if (strcmp(v, "gpu") && strcmp(v, "cpu")) return fail_arg(k, v, "must be gpu or cpu");
            a->want_gpu = strcmp(v, "gpu") == 0;
        } else if (idx == 4) {
            if (!strcmp(v, "fp16")) a->precision = PREC_FP16;
            else if (!strcmp(v, "fp32")) a->precision = PREC_FP32;
            else if (!strcmp(v, "fp16acc32")) a->precision = PREC_FP16ACC32;
            else return fail_arg(k, v, "must be fp16, fp16acc32 or fp32");
        } else if (idx == 5) {
            if (parse_triple(v, a->mean)) return fail_arg(k, v, "must be three comma-separated numbers");
        } else if (idx == 6) {
            if (parse_triple(v, a->std) || a->std[0] <= 0 || a->std[1] <= 0 || a->std[2] <= 0)
                return fail_arg(k, v, "must be three comma-separated positive numbers");
        } else if (idx == 7) {
            if (parse_int(v, 1, 64, &a->threads)) return fail_arg(k, v, "must be 1-64");
        } else if (idx == 8) {
            if (parse_int(v, 1, 600000, &a->io_timeout_ms)) return fail_arg(k, v, "must be 1-600000");
        } else if (idx == 9) a->libdir = v;
        else a->litert_lib = v;
    }
    if (!a->model || !a->socket_spec || !a->token_file) {
        log_msg("model=, socket= and token_file= are required");
        return -1;
    }
    return 0;
}

/* Read the session token from PATH and delete the file, whatever happens. The token never
 * appears on the command line (readable by every local user in /proc/PID/cmdline); the file
 * must be a regular file of ours that no one else may read or write (mode 0600 or stricter),
 * holding 16-64 lowercase hex digits and at most one trailing newline. */
static int read_token_file(const char *path, char out[65]) {
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    int saved = errno;
    unlink(path);
    if (fd < 0) {
        log_msg("cannot open the token file %s: %s", path, strerror(saved));
        return -1;
    }
    struct stat st;
    char buf[80];
    ssize_t n = -1;
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() && (st.st_mode & 077) == 0;
    if (ok) n = read(fd, buf, sizeof buf);
    close(fd);
    if (!ok) {
        log_msg("the token file %s must be a regular file owned by this user with mode 0600", path);
        return -1;
    }
    if (n > 0 && buf[n - 1] == '\n') n--;
    if (n < 16 || n > 64 || strspn(buf, "0123456789abcdef") < (size_t)n) {
        log_msg("the token file %s must hold 16-64 lowercase hex digits", path);
        return -1;
    }
    memcpy(out, buf, (size_t)n);
    out[n] = '\0';
    return 0;
}

/* ---------------------------------------------------------------- LiteRT model */

typedef struct {
    LiteRtApi api;
    void *lib;
    LiteRtEnvironment env;
    LiteRtModel model;
    LiteRtCompiledModel compiled;
    LiteRtTensorBuffer input, output;
    const char *input_name, *output_name;
    int in_dims[4], out_dims[4], out_rank;
    int size;               /* S: the model takes [1,3,S,S] */
    int accelerator;        /* ACCEL_* actually in use */
    char gpu_error[512];    /* why the GPU was not used */
    char gpu_library[64];   /* name LiteRT gives its registered GPU accelerator ("" if none) */
    char accel_basis[160];  /* how `accelerator` is known: LiteRT's report or our accepted request */
    int fully_accelerated;  /* LiteRtCompiledModelIsFullyAccelerated: 1, 0, or -1 unknown */
    unsigned gpu_rebuilds;  /* GPU models rebuilt after a failed read */
    double compile_ms, warmup_ms;
    float lut[3][256];      /* (v - mean[c]) / std[c] for every byte value */
} Model;

static const char *status_name(LiteRtStatus s) {
    switch (s) {
        case kLiteRtStatusOk: return "ok";
        case kLiteRtStatusErrorInvalidArgument: return "invalid argument";
        case kLiteRtStatusErrorMemoryAllocationFailure: return "out of memory";
        case kLiteRtStatusErrorRuntimeFailure: return "runtime failure";
        case kLiteRtStatusErrorMissingInputTensor: return "missing input tensor";
        case kLiteRtStatusErrorUnsupported: return "unsupported";
        case kLiteRtStatusErrorNotFound: return "not found";
        case kLiteRtStatusErrorTimeoutExpired: return "timeout";
        case kLiteRtStatusErrorWrongVersion: return "wrong version";
        case kLiteRtStatusErrorFileIO: return "file I/O error";
        case kLiteRtStatusErrorInvalidFlatbuffer: return "invalid flatbuffer (not a .tflite?)";
        case kLiteRtStatusErrorDynamicLoading: return "dynamic loading failed";
        case kLiteRtStatusErrorSerialization: return "serialization error";
        case kLiteRtStatusErrorCompilation: return "compilation failed";
        default: return "error";
    }
}

static int load_litert(Model *m, const Args *a, const char *exe_dir) {
    char path[PATH_MAX + 32];
    if (a->litert_lib) snprintf(path, sizeof path, "%s", a->litert_lib);
    else snprintf(path, sizeof path, "%s/libLiteRt.so", exe_dir);
#if !defined(__ANDROID__)
    /* Software Vulkan drivers (Mesa lavapipe) JIT-compile shaders that call libm and look the
     * symbols up in the global scope; the runner itself needs nothing from libm, so its NEEDED
     * list lacks it and those calls would jump to address 0. Load it globally first. */
    if (!dlopen("libm.so.6", RTLD_NOW | RTLD_GLOBAL)) log_msg("cannot load libm.so.6: %s", dlerror());
#endif
    m->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!m->lib && !a->litert_lib) m->lib = dlopen("libLiteRt.so", RTLD_NOW | RTLD_LOCAL);
    if (!m->lib) {
        log_msg("cannot load the LiteRT library %s: %s (push libLiteRt.so beside the runner)", path, dlerror());
        return -1;
    }
#define LITERT_RESOLVE(ret, name, params)                                                   \
    m->api.name = (ret(*) params)dlsym(m->lib, #name);                                      \
    if (!m->api.name) {                                                                     \
        log_msg("the LiteRT library %s lacks %s: wrong LiteRT version?", path, #name);      \
        return -1;                                                                          \
    }
    LITERT_API_FUNCTIONS(LITERT_RESOLVE)
#undef LITERT_RESOLVE
    return 0;
}

static int read_tensor_dims(Model *m, LiteRtTensor t, const char *what, int dims[4], int *rank) {
    LiteRtRankedTensorType type;
    LiteRtStatus s = m->api.LiteRtGetRankedTensorType(t, &type);
    if (s != kLiteRtStatusOk) {
        log_msg("cannot read the %s tensor type: %s", what, status_name(s));
        return -1;
    }
    if (type.element_type != kLiteRtElementTypeFloat32 || type.layout.rank < 1 || type.layout.rank > 4) {
        log_msg("the %s tensor must be float32 with rank 1-4 (got element type %d, rank %u)", what,
                type.element_type, (unsigned)type.layout.rank);
        return -1;
    }
    *rank = (int)type.layout.rank;
    for (int i = 0; i < 4; i++) dims[i] = i < *rank ? type.layout.dimensions[i] : 1;
    return 0;
}

static int inspect_model(Model *m) {
    LiteRtParamIndex nsig = 0, nin = 0, nout = 0;
    LiteRtSignature sig;
    LiteRtTensor tin, tout;
    int in_rank;
    if (m->api.LiteRtGetNumModelSignatures(m->model, &nsig) != kLiteRtStatusOk || nsig < 1 ||
        m->api.LiteRtGetModelSignature(m->model, 0, &sig) != kLiteRtStatusOk ||
        m->api.LiteRtGetNumSignatureInputs(sig, &nin) != kLiteRtStatusOk ||
        m->api.LiteRtGetNumSignatureOutputs(sig, &nout) != kLiteRtStatusOk) {
        log_msg("the model has no readable signature");
        return -1;
    }
    if (nin != 1 || nout != 1) {
        log_msg("the model must have one input and one output (has %zu and %zu)", (size_t)nin, (size_t)nout);
        return -1;
    }
    if (m->api.LiteRtGetSignatureInputName(sig, 0, &m->input_name) != kLiteRtStatusOk ||
        m->api.LiteRtGetSignatureOutputName(sig, 0, &m->output_name) != kLiteRtStatusOk ||
        m->api.LiteRtGetSignatureInputTensorByIndex(sig, 0, &tin) != kLiteRtStatusOk ||
        m->api.LiteRtGetSignatureOutputTensorByIndex(sig, 0, &tout) != kLiteRtStatusOk) {
        log_msg("cannot read the signature's tensors");
        return -1;
    }
    if (read_tensor_dims(m, tin, "input", m->in_dims, &in_rank) ||
        read_tensor_dims(m, tout, "output", m->out_dims, &m->out_rank))
        return -1;
    int s = m->in_dims[2];
    long out_count = (long)m->out_dims[0] * m->out_dims[1] * m->out_dims[2] * m->out_dims[3];
    if (in_rank != 4 || m->in_dims[0] != 1 || m->in_dims[1] != 3 || s < 1 || m->in_dims[3] != s || s > 4096) {
        log_msg("the input must be [1,3,S,S] float32 (got [%d,%d,%d,%d])", m->in_dims[0], m->in_dims[1],
                m->in_dims[2], m->in_dims[3]);
        return -1;
    }
    if (out_count != (long)s * s) {
        log_msg("the output must hold S*S = %d values (one depth map)", s * s);
        return -1;
    }
    m->size = s;
    return 0;
}

/* LiteRT takes accelerator settings as a malloc'd TOML string that it frees itself. */
static void *toml_payload(const char *fmt, ...) {
    char *text = malloc(96);
    if (text) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, 96, fmt, ap);
        va_end(ap);
    }
    return text;
}

/* Compile for one accelerator; returns the LiteRT status so the caller can report it. */
static LiteRtStatus compile_for(Model *m, int accel, int precision, int threads) {
    LiteRtOptions opts = NULL;
    LiteRtOpaqueOptions opaque = NULL;
    LiteRtStatus s = m->api.LiteRtCreateOptions(&opts);
    if (s != kLiteRtStatusOk) return s;
    if (accel == ACCEL_CPU) {
        s = m->api.LiteRtSetOptionsHardwareAccelerators(opts, kLiteRtHwAcceleratorCpu);
        if (s == kLiteRtStatusOk && threads > 0) {
            void *text = toml_payload("num_threads = %d\n", threads);
            s = text ? m->api.LiteRtCreateOpaqueOptions("xnnpack", text, free, &opaque) : kLiteRtStatusErrorMemoryAllocationFailure;
            if (s == kLiteRtStatusOk) s = m->api.LiteRtAddOpaqueOptions(opts, opaque);
        }
    } else {
        int backend = accel == ACCEL_GPU_OPENCL ? 1 : accel == ACCEL_GPU_WEBGPU ? 2 : 3; /* LiteRT GpuOptions */
        /* WebGPU: benchmark_mode makes Run wait for the GPU, so the output lock below never meets
         * LiteRT's ~120 s bound on a slow (software) GPU; a timed-out lock stays locked for good.
         * Not used on Android, where a run takes tens of ms and the mode's cost is unmeasured. */
        const char *wait = accel == ACCEL_GPU_WEBGPU ? "benchmark_mode = true\n" : "";
        s = m->api.LiteRtSetOptionsHardwareAccelerators(opts, kLiteRtHwAcceleratorGpu);
        if (s == kLiteRtStatusOk) {
            void *text = toml_payload("precision = %d\nbackend = %d\n%s", precision, backend, wait);
            s = text ? m->api.LiteRtCreateOpaqueOptions("gpu_options", text, free, &opaque) : kLiteRtStatusErrorMemoryAllocationFailure;
            if (s == kLiteRtStatusOk) s = m->api.LiteRtAddOpaqueOptions(opts, opaque);
        }
    }
    if (s == kLiteRtStatusOk) s = m->api.LiteRtCreateCompiledModel(m->env, m->model, opts, &m->compiled);
    m->api.LiteRtDestroyOptions(opts);
    return s;
}

static int create_buffers(Model *m, LiteRtSignature sig) {
    LiteRtTensor tin, tout;
    LiteRtRankedTensorType tin_type, tout_type;
    LiteRtTensorBufferRequirements rin, rout;
    if (m->api.LiteRtGetSignatureInputTensorByIndex(sig, 0, &tin) != kLiteRtStatusOk ||
        m->api.LiteRtGetSignatureOutputTensorByIndex(sig, 0, &tout) != kLiteRtStatusOk ||
        m->api.LiteRtGetRankedTensorType(tin, &tin_type) != kLiteRtStatusOk ||
        m->api.LiteRtGetRankedTensorType(tout, &tout_type) != kLiteRtStatusOk)
        return -1;
    LiteRtStatus s = m->api.LiteRtGetCompiledModelInputBufferRequirements(m->compiled, 0, 0, &rin);
    if (s == kLiteRtStatusOk) s = m->api.LiteRtGetCompiledModelOutputBufferRequirements(m->compiled, 0, 0, &rout);
    if (s == kLiteRtStatusOk) s = m->api.LiteRtCreateManagedTensorBufferFromRequirements(m->env, &tin_type, rin, &m->input);
    if (s == kLiteRtStatusOk) s = m->api.LiteRtCreateManagedTensorBufferFromRequirements(m->env, &tout_type, rout, &m->output);
    if (s != kLiteRtStatusOk) {
        log_msg("cannot create tensor buffers: %s", status_name(s));
        return -1;
    }
    return 0;
}

static const char *accel_name(int accel) {
    switch (accel) {
        case ACCEL_GPU_OPENCL: return "gpu-opencl";
        case ACCEL_GPU_OPENGL: return "gpu-opengl";
        case ACCEL_GPU_WEBGPU: return "gpu-webgpu";
        default: return "cpu";
    }
}

static void release_compiled(Model *m) {
    if (m->input) m->api.LiteRtDestroyTensorBuffer(m->input);
    if (m->output) m->api.LiteRtDestroyTensorBuffer(m->output);
    if (m->compiled) m->api.LiteRtDestroyCompiledModel(m->compiled);
    m->input = m->output = NULL;
    m->compiled = NULL;
}

static void add_gpu_error(Model *m, const char *fmt, ...) {
    size_t used = strlen(m->gpu_error);
    if (used + 3 >= sizeof m->gpu_error) return;
    if (used) {
        memcpy(m->gpu_error + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->gpu_error + used, sizeof m->gpu_error - used, fmt, ap);
    va_end(ap);
}

/* After a GPU compile: what LiteRT says about it. LiteRT names the GPU accelerator library it
 * registered ("GPU WebGPU" on the host) but not the backend an OpenCL/OpenGL library picked, so
 * on Android the label is the backend we asked for and the library accepted, and says so. */
static void describe_gpu(Model *m, int requested) {
    LiteRtParamIndex n = 0;
    m->gpu_library[0] = '\0';
    if (m->api.LiteRtGetNumAccelerators(m->env, &n) == kLiteRtStatusOk) {
        for (LiteRtParamIndex i = 0; i < n && !m->gpu_library[0]; i++) {
            LiteRtAccelerator acc;
            LiteRtHwAcceleratorSet hw = 0;
            const char *name = NULL;
            if (m->api.LiteRtGetAccelerator(m->env, i, &acc) == kLiteRtStatusOk &&
                m->api.LiteRtGetAcceleratorHardwareSupport(acc, &hw) == kLiteRtStatusOk &&
                (hw & kLiteRtHwAcceleratorGpu) && m->api.LiteRtGetAcceleratorName(acc, &name) == kLiteRtStatusOk && name)
                snprintf(m->gpu_library, sizeof m->gpu_library, "%s", name);
        }
    }
    if (strstr(m->gpu_library, "WebGPU")) {
        m->accelerator = ACCEL_GPU_WEBGPU;
        snprintf(m->accel_basis, sizeof m->accel_basis, "reported by LiteRT: its GPU accelerator is '%s'",
                 m->gpu_library);
    } else {
        m->accelerator = requested;
        snprintf(m->accel_basis, sizeof m->accel_basis,
                 "requested backend %s, accepted by LiteRT's GPU accelerator '%s' (LiteRT does not report the backend)",
                 accel_name(requested), m->gpu_library[0] ? m->gpu_library : "?");
    }
    bool full = false;
    m->fully_accelerated = m->api.LiteRtCompiledModelIsFullyAccelerated(m->compiled, &full) == kLiteRtStatusOk ? full : -1;
}

/* Compile on the GPU: WebGPU on the host (the wheel's only GPU library), OpenCL then OpenGL on
 * Android. Returns 0 with buffers ready, or -1 with the reasons in gpu_error. */
static int compile_gpu(Model *m, const Args *a, LiteRtSignature sig) {
#if defined(__ANDROID__)
    static const int gpu_order[] = {ACCEL_GPU_OPENCL, ACCEL_GPU_OPENGL};
#else
    static const int gpu_order[] = {ACCEL_GPU_WEBGPU};
#endif
    for (size_t i = 0; i < sizeof gpu_order / sizeof gpu_order[0]; i++) {
        double t0 = now_ms();
        LiteRtStatus s = compile_for(m, gpu_order[i], a->precision, 0);
        if (s == kLiteRtStatusOk && create_buffers(m, sig) == 0) {
            m->compile_ms = now_ms() - t0;
            describe_gpu(m, gpu_order[i]);
            return 0;
        }
        add_gpu_error(m, "%s: compile status %d (%s)", accel_name(gpu_order[i]), s, status_name(s));
        release_compiled(m);
    }
    return -1;
}

static int compile_cpu(Model *m, const Args *a, LiteRtSignature sig) {
    double t0 = now_ms();
    LiteRtStatus s = compile_for(m, ACCEL_CPU, 0, a->threads);
    if (s != kLiteRtStatusOk) {
        m->compiled = NULL;
        log_msg("cannot compile the model on the CPU: status %d (%s)", s, status_name(s));
        return -1;
    }
    m->accelerator = ACCEL_CPU;
    m->compile_ms = now_ms() - t0;
    m->fully_accelerated = -1;
    snprintf(m->accel_basis, sizeof m->accel_basis, a->want_gpu ? "CPU fallback (XNNPACK): the GPU failed, see gpu_error"
                                                                : "CPU requested (XNNPACK)");
    if (create_buffers(m, sig)) return -1;
    return 0;
}

static void build_lut(Model *m, const Args *a) {
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) m->lut[c][v] = ((float)v - a->mean[c]) / a->std[c];
}

typedef struct {
    uint32_t nonfinite, normalize_us, compute_us, readback_us;
} RunStats;

/* One inference: rgb is S*S*3 HWC uint8 (NULL = a black image for the warm-up); the depth
 * goes to out as float32 or float16 (out may be NULL). Returns a LiteRT status.
 * A GPU run may return once its work is queued (the output then carries no event to wait on,
 * measured with WebGPU); the output lock is what waits for the result. So compute_us runs
 * until the lock returns (the depth is ready) and readback_us is the copy/convert after it.
 * A failed lock may leave the buffer locked: the caller rebuilds the model then. */
static LiteRtStatus run_model(Model *m, const unsigned char *rgb, void *out, int want_f16, RunStats *st) {
    const size_t plane = (size_t)m->size * m->size;
    void *ptr;
    double t0 = now_ms();
    LiteRtStatus s = m->api.LiteRtLockTensorBuffer(m->input, &ptr, kLiteRtTensorBufferLockModeWrite);
    if (s != kLiteRtStatusOk) return s;
    float *dst = ptr;
    for (int c = 0; c < 3; c++) {
        const float *lut = m->lut[c];
        float *d = dst + c * plane;
        if (rgb) {
            const unsigned char *src = rgb + c;
            for (size_t i = 0; i < plane; i++) d[i] = lut[src[3 * i]];
        } else {
            for (size_t i = 0; i < plane; i++) d[i] = lut[0];
        }
    }
    s = m->api.LiteRtUnlockTensorBuffer(m->input);
    if (s != kLiteRtStatusOk) return s;
    double t1 = now_ms();
    s = m->api.LiteRtRunCompiledModel(m->compiled, 0, 1, &m->input, 1, &m->output);
    if (s != kLiteRtStatusOk) return s;
    s = m->api.LiteRtLockTensorBuffer(m->output, &ptr, kLiteRtTensorBufferLockModeRead);
    if (s != kLiteRtStatusOk) return s;
    double t2 = now_ms();
    const float *depth = ptr;
    uint32_t bad = 0;
    for (size_t i = 0; i < plane; i++) bad += !isfinite(depth[i]);
    if (out && want_f16) {
        _Float16 *h = out; /* the compiler's cast: IEEE round to nearest even, NaN stays NaN */
        for (size_t i = 0; i < plane; i++) h[i] = (_Float16)depth[i];
    } else if (out) {
        memcpy(out, depth, plane * sizeof(float));
    }
    s = m->api.LiteRtUnlockTensorBuffer(m->output);
    double t3 = now_ms();
    st->nonfinite = bad;
    st->normalize_us = (uint32_t)((t1 - t0) * 1e3);
    st->compute_us = (uint32_t)((t2 - t1) * 1e3);
    st->readback_us = (uint32_t)((t3 - t2) * 1e3);
    return s;
}

static int warm_up(Model *m) {
    RunStats st;
    double t0 = now_ms();
    LiteRtStatus s = run_model(m, NULL, NULL, 0, &st);
    m->warmup_ms = now_ms() - t0;
    if (s != kLiteRtStatusOk) {
        log_msg("the warm-up run failed on %s after %.0f ms: status %d (%s)", accel_name(m->accelerator),
                m->warmup_ms, s, status_name(s));
        if (m->accelerator != ACCEL_CPU)
            add_gpu_error(m, "%s: warm-up run status %d (%s) after %.0f ms", accel_name(m->accelerator), s,
                          status_name(s), m->warmup_ms);
        return -1;
    }
    log_msg("warm-up run took %.1f ms", m->warmup_ms);
    return 0;
}

/* After a failed GPU run the output buffer may stay locked inside LiteRT: start over with a
 * fresh compiled model and buffers on the same GPU, or on the CPU if that no longer works. */
static void rebuild_after_failure(Model *m, const Args *a) {
    LiteRtSignature sig;
    int was = m->accelerator;
    double t0 = now_ms();
    release_compiled(m);
    m->gpu_rebuilds++;
    if (m->api.LiteRtGetModelSignature(m->model, 0, &sig) == kLiteRtStatusOk) {
        if (compile_for(m, was, a->precision, 0) == kLiteRtStatusOk && create_buffers(m, sig) == 0) {
            log_msg("rebuilt the %s model in %.1f ms after a failed run", accel_name(was), now_ms() - t0);
            return;
        }
        release_compiled(m);
        add_gpu_error(m, "%s: could not be rebuilt after a failed run", accel_name(was));
        if (compile_cpu(m, a, sig) == 0) {
            log_msg("the GPU model could not be rebuilt; now serving on the CPU");
            return;
        }
    }
    log_msg("cannot rebuild the model on any accelerator; exiting");
    exit(EXIT_MODEL);
}

static int open_model(Model *m, const Args *a, const char *exe_dir) {
    if (load_litert(m, a, exe_dir)) return -1;
    LiteRtEnvOption env_opt = {.tag = kLiteRtEnvOptionTagRuntimeLibraryDir,
                               .value = {.type = kLiteRtAnyTypeString, .str_value = a->libdir ? a->libdir : exe_dir}};
    LiteRtStatus s = m->api.LiteRtCreateEnvironment(1, &env_opt, &m->env);
    if (s != kLiteRtStatusOk) {
        log_msg("cannot create the LiteRT environment: %s", status_name(s));
        return -1;
    }
    s = m->api.LiteRtCreateModelFromFile(m->env, a->model, &m->model);
    if (s != kLiteRtStatusOk) {
        log_msg("cannot load the model %s: %s", a->model, status_name(s));
        return -1;
    }
    LiteRtSignature sig;
    if (inspect_model(m) || m->api.LiteRtGetModelSignature(m->model, 0, &sig) != kLiteRtStatusOk) return -1;
    build_lut(m, a);
    m->gpu_error[0] = '\0';
    if (!a->want_gpu) {
        snprintf(m->gpu_error, sizeof m->gpu_error, "not requested (accelerator=cpu)");
    } else if (compile_gpu(m, a, sig) == 0) {
        log_msg("compiled for %s in %.1f ms (%s; fully accelerated: %d)", accel_name(m->accelerator), m->compile_ms,
                m->accel_basis, m->fully_accelerated);
        if (warm_up(m) == 0) return 0;
        release_compiled(m);
    }
    if (a->want_gpu) log_msg("GPU not available (%s); falling back to CPU", m->gpu_error);
    if (compile_cpu(m, a, sig)) return -1;
    log_msg("compiled for %s in %.1f ms", accel_name(m->accelerator), m->compile_ms);
    return warm_up(m);
}

/* ---------------------------------------------------------------- sockets */

static char g_unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

static void remove_unix_socket(void) {
    if (g_unix_path[0]) unlink(g_unix_path);
}

static void on_signal(int sig) {
    remove_unix_socket();
    _exit(128 + sig);
}

/* Bind and listen on SPEC; writes the bound spec (real TCP port) to `bound`. */
static int listen_on(const char *spec, char *bound, size_t bound_size, int *is_tcp) {
    int fd;
    *is_tcp = 0;
    if (!strncmp(spec, "localabstract:", 14) || !strncmp(spec, "unix:", 5)) {
        int abstract = spec[0] == 'l';
        const char *name = strchr(spec, ':') + 1;
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        size_t n = strlen(name);
        if (n == 0 || n + 1 >= sizeof addr.sun_path) {
            log_msg("socket name '%s' is empty or too long (at most %zu bytes)", name, sizeof addr.sun_path - 2);
            return -1;
        }
        memcpy(addr.sun_path + abstract, name, n);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        if (!abstract) {
            struct stat st;
            if (lstat(name, &st) == 0 && S_ISSOCK(st.st_mode)) unlink(name);
        }
        socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + abstract + n + !abstract);
        if (bind(fd, (struct sockaddr *)&addr, len) < 0) {
            log_msg("cannot bind %s: %s", spec, strerror(errno));
            close(fd);
            return -1;
        }
        if (!abstract) memcpy(g_unix_path, name, n + 1);
        snprintf(bound, bound_size, "%s", spec);
    } else if (!strncmp(spec, "tcp:", 4)) {
        int port;
        if (parse_int(spec + 4, 0, 65535, &port)) {
            log_msg("bad TCP port in %s", spec);
            return -1;
        }
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int one = 1;
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        socklen_t len = sizeof addr;
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || getsockname(fd, (struct sockaddr *)&addr, &len) < 0) {
            log_msg("cannot bind %s: %s", spec, strerror(errno));
            close(fd);
            return -1;
        }
        snprintf(bound, bound_size, "tcp:%u", (unsigned)ntohs(addr.sin_port));
        *is_tcp = 1;
    } else {
        log_msg("socket must be localabstract:NAME, unix:/PATH or tcp:PORT (got %s)", spec);
        return -1;
    }
    if (listen(fd, LISTEN_BACKLOG) < 0) {
        log_msg("cannot listen on %s: %s", spec, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

enum { IO_OK = 1, IO_EOF = 0, IO_ERROR = -1, IO_TIMEOUT = -2 };

/* Read exactly n bytes before the absolute deadline (now_ms() clock; a negative deadline waits
 * forever). The deadline covers the whole read, not each byte: a client that trickles one
 * byte at a time is dropped when the deadline passes. IO_EOF only when the peer closed before
 * the first byte. */
static int read_exact(int fd, unsigned char *buf, size_t n, double deadline) {
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int wait_ms = -1;
        if (deadline >= 0) {
            double left = deadline - now_ms();
            if (left <= 0) return IO_TIMEOUT;
            wait_ms = (int)left + 1;
        }
        int r = poll(&p, 1, wait_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return IO_ERROR;
        if (r == 0) return IO_TIMEOUT;
        ssize_t k = read(fd, buf + got, n - got);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k < 0) return IO_ERROR;
        if (k == 0) return got == 0 ? IO_EOF : IO_ERROR;
        got += (size_t)k;
    }
    return IO_OK;
}

/* One reply = one writev (header + up to two payload parts); loops only on a partial write. */
static int send_frame(int fd, int type, uint32_t id, const void *p1, size_t n1, const void *p2, size_t n2) {
    unsigned char h[HEADER_SIZE] = {0};
    uint32_t len = (uint32_t)(n1 + n2);
    memcpy(h, MAGIC, 4);
    h[4] = (unsigned char)type;
    memcpy(h + 8, &id, 4);
    memcpy(h + 12, &len, 4);
    struct iovec iov[3] = {{h, HEADER_SIZE}, {(void *)p1, n1}, {(void *)p2, n2}};
    int cnt = 3;
    struct iovec *v = iov;
    while (cnt > 0) {
        ssize_t k = writev(fd, v, cnt);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -1;
        while (cnt > 0 && (size_t)k >= v->iov_len) {
            k -= (ssize_t)v->iov_len;
            v++;
            cnt--;
        }
        if (cnt > 0) {
            v->iov_base = (char *)v->iov_base + k;
            v->iov_len -= (size_t)k;
        }
    }
    return 0;
}

static int send_error(int fd, uint32_t id, uint32_t code, const char *fmt, ...) {
    unsigned char buf[4 + 400];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf((char *)buf + 4, sizeof buf - 4, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n > sizeof buf - 5) n = (int)sizeof buf - 5;
    memcpy(buf, &code, 4);
    if (log_allowed()) log_msg("error %u to client: %s", code, (char *)buf + 4);
    return send_frame(fd, MSG_ERROR, id, buf, 4 + (size_t)n, NULL, 0);
}

/* ---------------------------------------------------------------- serving */

typedef struct {
    const Args *args;
    Model *model;
    unsigned char sha[32];  /* the model's sha256, computed on the first HELLO that asks for a check */
    char sha_hex[65];       /* "" until then */
    long long model_bytes;
    unsigned char *request;  /* max request payload */
    unsigned char *reply;    /* INFER reply: head + S*S*4 */
    unsigned long long requests, connections;
} Server;

static void json_string(char *out, size_t size, const char *s) {
    size_t o = 0;
    if (size < 3) return;
    out[o++] = '"';
    for (; *s && o + 8 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, size - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
}

static int handle_info(Server *sv, int fd, uint32_t id) {
    const Model *m = sv->model;
    const Args *a = sv->args;
    static const char *prec[] = {"n/a", "fp16", "fp32", "fp16acc32"};
    char path[PATH_MAX * 2 + 8], in_name[300], out_name[300], gpu_err[1200], gpu_lib[140], basis[340], text[4096];
    static const char *full[] = {"null", "false", "true"};
    json_string(path, sizeof path, a->model);
    json_string(in_name, sizeof in_name, m->input_name ? m->input_name : "");
    json_string(out_name, sizeof out_name, m->output_name ? m->output_name : "");
    json_string(gpu_err, sizeof gpu_err, m->gpu_error);
    json_string(gpu_lib, sizeof gpu_lib, m->gpu_library);
    json_string(basis, sizeof basis, m->accel_basis);
    char out_shape[64];
    int o = snprintf(out_shape, sizeof out_shape, "[");
    for (int i = 0; i < m->out_rank; i++) o += snprintf(out_shape + o, sizeof out_shape - (size_t)o, "%s%d", i ? "," : "", m->out_dims[i]);
    snprintf(out_shape + o, sizeof out_shape - (size_t)o, "]");
    int n = snprintf(text, sizeof text,
                     "{\"runner_version\":\"%s\",\"platform\":\"%s\",\"pid\":%d,\"model_path\":%s,"
                     "\"model_sha256\":\"%s\",\"model_bytes\":%lld,\"input_name\":%s,\"output_name\":%s,"
                     "\"input_shape\":[%d,%d,%d,%d],\"output_shape\":%s,\"accelerator\":\"%s\","
                     "\"requested_accelerator\":\"%s\",\"precision\":\"%s\",\"gpu_error\":%s,"
                     "\"gpu_library\":%s,\"accelerator_basis\":%s,\"fully_accelerated\":%s,\"gpu_rebuilds\":%u,"
                     "\"compile_ms\":%.3f,\"warmup_ms\":%.3f,\"threads\":%d,\"mean\":[%g,%g,%g],"
                     "\"std\":[%g,%g,%g],\"requests_served\":%llu,\"connections_served\":%llu}",
                     RUNNER_VERSION, RUNNER_PLATFORM, (int)getpid(), path, sv->sha_hex, sv->model_bytes, in_name,
                     out_name, m->in_dims[0], m->in_dims[1], m->in_dims[2], m->in_dims[3], out_shape,
                     accel_name(m->accelerator), a->want_gpu ? "gpu" : "cpu", prec[a->precision], gpu_err,
                     gpu_lib, basis, full[m->fully_accelerated + 1], m->gpu_rebuilds, m->compile_ms, m->warmup_ms,
                     a->threads, a->mean[0], a->mean[1], a->mean[2], a->std[0],
                     a->std[1], a->std[2], sv->requests, sv->connections);
    if (n < 0 || (size_t)n >= sizeof text) return send_error(fd, id, ERR_INFERENCE_FAILED, "INFO text too long");
    return send_frame(fd, MSG_INFO | REPLY_BIT, id, text, (size_t)n, NULL, 0);
}

static int handle_infer(Server *sv, int fd, uint32_t id, int flags, size_t len) {
    Model *m = sv->model;
    size_t plane = (size_t)m->size * m->size;
    if (flags & ~FLAG_F16) return send_error(fd, id, ERR_BAD_REQUEST, "unknown INFER flags 0x%02x", flags);
    if (len != plane * 3)
        return send_error(fd, id, ERR_BAD_LENGTH, "INFER needs %zu bytes (%dx%dx3 uint8 RGB), got %zu", plane * 3,
                          m->size, m->size, len);
    int f16 = flags & FLAG_F16;
    RunStats st;
    unsigned char *head = sv->reply;
    LiteRtStatus s = run_model(m, sv->request, head + INFER_REPLY_HEAD, f16, &st);
    if (s != kLiteRtStatusOk) {
        int was = m->accelerator;
        if (was != ACCEL_CPU) rebuild_after_failure(m, sv->args);
        return send_error(fd, id, ERR_INFERENCE_FAILED, "inference failed on %s: status %d (%s)%s%s",
                          accel_name(was), s, status_name(s), was != ACCEL_CPU ? "; model rebuilt on " : "",
                          was != ACCEL_CPU ? accel_name(m->accelerator) : "");
    }
    uint32_t fields[8] = {(uint32_t)m->size, (uint32_t)m->size, f16 ? DTYPE_F16 : DTYPE_F32, st.nonfinite,
                          st.normalize_us, st.compute_us, st.readback_us, 0};
    memcpy(head, fields, sizeof fields);
    if (st.nonfinite) log_msg("request %u: %u non-finite depth values", id, st.nonfinite);
    return send_frame(fd, MSG_INFER | REPLY_BIT, id, head, INFER_REPLY_HEAD + plane * (f16 ? 2 : 4), NULL, 0);
}

static int token_matches(const char *expected, const unsigned char *field) {
    unsigned char want[64] = {0}, diff = 0;
    memcpy(want, expected, strlen(expected));
    for (int i = 0; i < 64; i++) diff |= (unsigned char)(want[i] ^ field[i]);
    return diff == 0;
}

/* Returns 0 when authenticated, -1 after an error reply (the caller closes). */
static int handle_hello(Server *sv, int fd, uint32_t id, size_t len) {
    const unsigned char *p = sv->request;
    static const unsigned char zero[32];
    if (len != HELLO_SIZE) {
        send_error(fd, id, ERR_BAD_LENGTH, "HELLO must be %d bytes, got %zu", HELLO_SIZE, len);
        return -1;
    }
    char version[33] = {0};
    memcpy(version, p, 32);
    if (strcmp(version, RUNNER_VERSION) != 0) {
        send_error(fd, id, ERR_VERSION_MISMATCH, "client speaks runner version '%.32s' but this runner is %s",
                   version, RUNNER_VERSION);
        return -1;
    }
    if (!token_matches(sv->args->token, p + 32)) {
        send_error(fd, id, ERR_BAD_TOKEN, "wrong session token");
        return -1;
    }
    if (memcmp(p + 96, zero, 32) != 0 && !sv->sha_hex[0]) {
        /* Hashing a 150 MB model takes seconds on the phone; the host verifies its push, so the
         * runner hashes only for a client that asks (once, then remembered). */
        long long bytes;
        if (sha256_file(sv->args->model, sv->sha, &bytes)) {
            send_error(fd, id, ERR_MODEL_MISMATCH, "cannot read the model to hash it: %s", strerror(errno));
            return -1;
        }
        hex_encode(sv->sha, 32, sv->sha_hex);
    }
    if (memcmp(p + 96, zero, 32) != 0 && memcmp(p + 96, sv->sha, 32) != 0) {
        char want[65];
        hex_encode(p + 96, 32, want);
        send_error(fd, id, ERR_MODEL_MISMATCH, "the runner's model has sha256 %s, the client expects %s",
                   sv->sha_hex, want);
        return -1;
    }
    unsigned char r[HELLO_REPLY_SIZE] = {0};
    uint32_t fields[4] = {(uint32_t)sv->model->size, (uint32_t)sv->model->accelerator,
                          sv->model->accelerator == ACCEL_CPU ? PREC_NA : (uint32_t)sv->args->precision, 0};
    memcpy(r, RUNNER_VERSION, strlen(RUNNER_VERSION));
    memcpy(r + 32, sv->sha, 32);
    memcpy(r + 64, fields, sizeof fields);
    return send_frame(fd, MSG_HELLO | REPLY_BIT, id, r, sizeof r, NULL, 0);
}

/* Serve one client until it leaves or misbehaves. Returns 1 when the runner should quit. */
static int serve_client(Server *sv, int fd) {
    const int io_ms = sv->args->io_timeout_ms;
    const size_t infer_bytes = (size_t)sv->model->size * sv->model->size * 3;
    int authenticated = 0;
    struct timeval tv = {.tv_sec = io_ms / 1000, .tv_usec = (io_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    /* Before HELLO the whole handshake frame must arrive within io_ms of the accept; after it,
     * the runner waits for a frame's first byte without a limit (an idle app keeps its
     * connection) and then the rest of that frame must arrive within io_ms. */
    double deadline = now_ms() + io_ms;
    for (;;) {
        unsigned char h[HEADER_SIZE];
        int r = authenticated ? read_exact(fd, h, 1, -1) : IO_OK;
        if (r == IO_EOF) return 0;
        if (r != IO_OK) return 0;
        if (authenticated) deadline = now_ms() + io_ms;
        r = read_exact(fd, h + authenticated, HEADER_SIZE - (size_t)authenticated, deadline);
        if (r == IO_EOF && !authenticated) return 0;
        if (r == IO_TIMEOUT) {
            send_error(fd, 0, ERR_TIMEOUT, "%s within %d ms; closing", authenticated ? "incomplete frame" : "no HELLO", io_ms);
            return 0;
        }
        if (r != IO_OK) return 0;
        uint32_t id, len;
        memcpy(&id, h + 8, 4);
        memcpy(&len, h + 12, 4);
        int type = h[4], flags = h[5];
        if (memcmp(h, MAGIC, 4) != 0) {
            send_error(fd, 0, ERR_BAD_MAGIC, "frame does not start with M3DR; is this a Metric3D runner client?");
            return 0;
        }
        if (!authenticated && type != MSG_HELLO) {  /* checked before any payload is read */
            send_error(fd, id, ERR_NOT_AUTHENTICATED, "the first request must be HELLO");
            return 0;
        }
        if (!authenticated && len != HELLO_SIZE) {
            send_error(fd, id, ERR_BAD_LENGTH, "HELLO must be %d bytes, got %u", HELLO_SIZE, len);
            return 0;
        }
        size_t limit = type == MSG_INFER ? infer_bytes : MAX_SMALL_PAYLOAD;
        if (len > limit) {
            send_error(fd, id, ERR_TOO_LARGE, "payload of %u bytes is over the %zu-byte limit for type 0x%02x", len, limit, type);
            return 0;
        }
        r = read_exact(fd, sv->request, len, deadline);
        if (r == IO_TIMEOUT) {
            send_error(fd, id, ERR_TIMEOUT, "frame incomplete after %d ms; closing", io_ms);
            return 0;
        }
        if (r != IO_OK) return 0;
        if (!authenticated) {
            if (handle_hello(sv, fd, id, len)) return 0;
            authenticated = 1;
            continue;
        }
        sv->requests++;
        int sent;
        switch (type) {
            case MSG_PING: sent = send_frame(fd, MSG_PING | REPLY_BIT, id, sv->request, len, NULL, 0); break;
            case MSG_INFO: sent = handle_info(sv, fd, id); break;
            case MSG_INFER: sent = handle_infer(sv, fd, id, flags, len); break;
            case MSG_QUIT:
                send_frame(fd, MSG_QUIT | REPLY_BIT, id, NULL, 0, NULL, 0);
                return 1;
            case MSG_HELLO: sent = send_error(fd, id, ERR_BAD_REQUEST, "already authenticated"); break;
            default: sent = send_error(fd, id, ERR_UNKNOWN_TYPE, "unknown request type 0x%02x", type); break;
        }
        if (sent) return 0;
    }
}

static void exe_directory(const char *argv0, char *out, size_t size) {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) buf[n] = '\0';
    else snprintf(buf, sizeof buf, "%s", argv0);
    char *slash = strrchr(buf, '/');
    if (slash) *slash = '\0';
    else snprintf(buf, sizeof buf, ".");
    snprintf(out, size, "%s", buf);
}

int main(int argc, char **argv) {
    Args args;
    Model model;
    Server sv;
    char exe_dir[PATH_MAX], bound[160];
    memset(&model, 0, sizeof model);
    memset(&sv, 0, sizeof sv);
    setvbuf(stderr, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (parse_args(argc, argv, &args)) {
        for (int i = 2; i < argc; i++)  /* never leave the secret behind, whatever was wrong */
            if (!strncmp(argv[i], "token_file=", 11)) unlink(argv[i] + 11);
        return EXIT_ARGS;
    }
    if (read_token_file(args.token_file, args.token)) return EXIT_ARGS;
    exe_directory(argv[0], exe_dir, sizeof exe_dir);
    log_msg("version %s (%s), pid %d, model %s", RUNNER_VERSION, RUNNER_PLATFORM, (int)getpid(), args.model);
    struct stat model_st;
    if (stat(args.model, &model_st) != 0) {
        log_msg("cannot read the model %s: %s", args.model, strerror(errno));
        return EXIT_MODEL;
    }
    sv.model_bytes = (long long)model_st.st_size;
    if (open_model(&model, &args, exe_dir)) return EXIT_MODEL;
    size_t plane = (size_t)model.size * model.size;
    sv.args = &args;
    sv.model = &model;
    sv.request = malloc(plane * 3 + MAX_SMALL_PAYLOAD);
    sv.reply = malloc(INFER_REPLY_HEAD + plane * 4);
    if (!sv.request || !sv.reply) {
        log_msg("out of memory");
        return EXIT_MODEL;
    }
    int is_tcp;
    int lfd = listen_on(args.socket_spec, bound, sizeof bound, &is_tcp);
    if (lfd < 0) return EXIT_SOCKET;
    atexit(remove_unix_socket);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGHUP, on_signal);
    printf("ready socket=%s accelerator=%s compile_ms=%.1f warmup_ms=%.1f version=%s\n", bound,
           accel_name(model.accelerator), model.compile_ms, model.warmup_ms, RUNNER_VERSION);
    fflush(stdout);
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            log_msg("accept failed: %s", strerror(errno));
            return EXIT_SOCKET;
        }
        if (is_tcp) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        sv.connections++;
        int quit = serve_client(&sv, fd);
        close(fd);
        if (quit) break;
    }
    log_msg("QUIT received after %llu requests; exiting", sv.requests);
    close(lfd);
    model.api.LiteRtDestroyTensorBuffer(model.input);
    model.api.LiteRtDestroyTensorBuffer(model.output);
    model.api.LiteRtDestroyCompiledModel(model.compiled);
    model.api.LiteRtDestroyModel(model.model);
    model.api.LiteRtDestroyEnvironment(model.env);
    return 0;
}
