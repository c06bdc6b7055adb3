/* The slice of the LiteRT C API the runner uses, declared from the published ABI.
 *
 * The runner loads libLiteRt.so with dlopen, so it builds with any C compiler (host gcc or
 * the NDK's clang) and needs no LiteRT headers. Every struct we pass by pointer carries a
 * _Static_assert on its size (LP64), so an ABI drift breaks the build instead of the phone.
 */
#ifndef METRIC3D_LITERT_API_H
#define METRIC3D_LITERT_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef int LiteRtStatus;
enum {
    kLiteRtStatusOk = 0,
    kLiteRtStatusErrorInvalidArgument = 1,
    kLiteRtStatusErrorMemoryAllocationFailure = 2,
    kLiteRtStatusErrorRuntimeFailure = 3,
    kLiteRtStatusErrorMissingInputTensor = 4,
    kLiteRtStatusErrorUnsupported = 5,
    kLiteRtStatusErrorNotFound = 6,
    kLiteRtStatusErrorTimeoutExpired = 7,
    kLiteRtStatusErrorWrongVersion = 8,
    kLiteRtStatusErrorUnknown = 9,
    kLiteRtStatusErrorFileIO = 500,
    kLiteRtStatusErrorInvalidFlatbuffer = 501,
    kLiteRtStatusErrorDynamicLoading = 502,
    kLiteRtStatusErrorSerialization = 503,
    kLiteRtStatusErrorCompilation = 504,
};

typedef int LiteRtHwAcceleratorSet;
enum { kLiteRtHwAcceleratorCpu = 1, kLiteRtHwAcceleratorGpu = 2, kLiteRtHwAcceleratorNpu = 4 };

typedef size_t LiteRtParamIndex;

enum { kLiteRtElementTypeFloat32 = 1, kLiteRtElementTypeFloat16 = 10 };
enum { kLiteRtTensorBufferLockModeRead = 0, kLiteRtTensorBufferLockModeWrite = 1 };

enum {
    kLiteRtAnyTypeNone = 0,
    kLiteRtAnyTypeBool = 1,
    kLiteRtAnyTypeInt = 2,
    kLiteRtAnyTypeReal = 3,
    kLiteRtAnyTypeString = 8,
    kLiteRtAnyTypeVoidPtr = 9,
};

typedef struct {
    int type;
    union {
        bool bool_value;
        int64_t int_value;
        double real_value;
        const char *str_value;
        const void *ptr_value;
    };
} LiteRtAny;
_Static_assert(sizeof(LiteRtAny) == 16, "LiteRtAny must be 16 bytes");
_Static_assert(offsetof(LiteRtAny, int_value) == 8, "LiteRtAny value must sit at offset 8");

enum {
    kLiteRtEnvOptionTagRuntimeLibraryDir = 22,
    kLiteRtEnvOptionTagMinLoggerSeverity = 25,
};

typedef struct {
    int tag;
    LiteRtAny value;
} LiteRtEnvOption;
_Static_assert(sizeof(LiteRtEnvOption) == 24, "LiteRtEnvOption must be 24 bytes");
_Static_assert(offsetof(LiteRtEnvOption, value) == 8, "LiteRtEnvOption value must sit at offset 8");

#define LITERT_TENSOR_MAX_RANK 8
typedef struct {
    unsigned int rank : 7;
    unsigned int has_strides : 1;
    int32_t dimensions[LITERT_TENSOR_MAX_RANK];
    uint32_t strides[LITERT_TENSOR_MAX_RANK];
} LiteRtLayout;
_Static_assert(sizeof(LiteRtLayout) == 68, "LiteRtLayout must be 68 bytes");
_Static_assert(offsetof(LiteRtLayout, dimensions) == 4, "LiteRtLayout dims must sit at offset 4");
_Static_assert(offsetof(LiteRtLayout, strides) == 36, "LiteRtLayout strides must sit at offset 36");

typedef struct {
    int element_type;
    LiteRtLayout layout;
} LiteRtRankedTensorType;
_Static_assert(sizeof(LiteRtRankedTensorType) == 72, "LiteRtRankedTensorType must be 72 bytes");
_Static_assert(offsetof(LiteRtRankedTensorType, layout) == 4, "layout must sit at offset 4");

typedef struct LiteRtEnvironmentT *LiteRtEnvironment;
typedef struct LiteRtModelT *LiteRtModel;
typedef struct LiteRtSignatureT *LiteRtSignature;
typedef struct LiteRtTensorT *LiteRtTensor;
typedef struct LiteRtOptionsT *LiteRtOptions;
typedef struct LiteRtOpaqueOptionsT *LiteRtOpaqueOptions;
typedef struct LiteRtCompiledModelT *LiteRtCompiledModel;
typedef struct LiteRtTensorBufferT *LiteRtTensorBuffer;
typedef struct LiteRtTensorBufferRequirementsT *LiteRtTensorBufferRequirements;
typedef struct LiteRtAcceleratorT *LiteRtAccelerator;

/* X(return type, name, parameter list): one line per C API function the runner calls. */
#define LITERT_API_FUNCTIONS(X)                                                                  \
    X(LiteRtStatus, LiteRtCreateEnvironment, (int, const LiteRtEnvOption *, LiteRtEnvironment *)) \
    X(void, LiteRtDestroyEnvironment, (LiteRtEnvironment))                                         \
    X(LiteRtStatus, LiteRtCreateModelFromFile, (LiteRtEnvironment, const char *, LiteRtModel *))   \
    X(void, LiteRtDestroyModel, (LiteRtModel))                                                     \
    X(LiteRtStatus, LiteRtGetNumModelSignatures, (LiteRtModel, LiteRtParamIndex *))                \
    X(LiteRtStatus, LiteRtGetModelSignature, (LiteRtModel, LiteRtParamIndex, LiteRtSignature *))   \
    X(LiteRtStatus, LiteRtGetNumSignatureInputs, (LiteRtSignature, LiteRtParamIndex *))            \
    X(LiteRtStatus, LiteRtGetNumSignatureOutputs, (LiteRtSignature, LiteRtParamIndex *))           \
    X(LiteRtStatus, LiteRtGetSignatureInputName, (LiteRtSignature, LiteRtParamIndex, const char **)) \
    X(LiteRtStatus, LiteRtGetSignatureOutputName, (LiteRtSignature, LiteRtParamIndex, const char **)) \
    X(LiteRtStatus, LiteRtGetSignatureInputTensorByIndex,                                          \
      (LiteRtSignature, LiteRtParamIndex, LiteRtTensor *))                                         \
    X(LiteRtStatus, LiteRtGetSignatureOutputTensorByIndex,                                         \
      (LiteRtSignature, LiteRtParamIndex, LiteRtTensor *))                                         \
    X(LiteRtStatus, LiteRtGetRankedTensorType, (LiteRtTensor, LiteRtRankedTensorType *))           \
    X(LiteRtStatus, LiteRtCreateOptions, (LiteRtOptions *))                                        \
    X(void, LiteRtDestroyOptions, (LiteRtOptions))                                                 \
    X(LiteRtStatus, LiteRtSetOptionsHardwareAccelerators, (LiteRtOptions, LiteRtHwAcceleratorSet)) \
    X(LiteRtStatus, LiteRtCreateOpaqueOptions,                                                     \
      (const char *, void *, void (*)(void *), LiteRtOpaqueOptions *))                             \
    X(LiteRtStatus, LiteRtAddOpaqueOptions, (LiteRtOptions, LiteRtOpaqueOptions))                  \
    X(LiteRtStatus, LiteRtCreateCompiledModel,                                                     \
      (LiteRtEnvironment, LiteRtModel, LiteRtOptions, LiteRtCompiledModel *))                      \
    X(void, LiteRtDestroyCompiledModel, (LiteRtCompiledModel))                                     \
    X(LiteRtStatus, LiteRtGetCompiledModelInputBufferRequirements,                                 \
      (LiteRtCompiledModel, LiteRtParamIndex, LiteRtParamIndex, LiteRtTensorBufferRequirements *)) \
    X(LiteRtStatus, LiteRtGetCompiledModelOutputBufferRequirements,                                \
      (LiteRtCompiledModel, LiteRtParamIndex, LiteRtParamIndex, LiteRtTensorBufferRequirements *)) \
    X(LiteRtStatus, LiteRtCreateManagedTensorBufferFromRequirements,                               \
      (LiteRtEnvironment, const LiteRtRankedTensorType *, LiteRtTensorBufferRequirements,          \
       LiteRtTensorBuffer *))                                                                      \
    X(void, LiteRtDestroyTensorBuffer, (LiteRtTensorBuffer))                                       \
    X(LiteRtStatus, LiteRtLockTensorBuffer, (LiteRtTensorBuffer, void **, int))                    \
    X(LiteRtStatus, LiteRtUnlockTensorBuffer, (LiteRtTensorBuffer))                                \
    X(LiteRtStatus, LiteRtRunCompiledModel,                                                        \
      (LiteRtCompiledModel, LiteRtParamIndex, size_t, LiteRtTensorBuffer *, size_t,                \
       LiteRtTensorBuffer *))                                                                      \
    X(LiteRtStatus, LiteRtCompiledModelIsFullyAccelerated, (LiteRtCompiledModel, bool *))          \
    X(LiteRtStatus, LiteRtGetNumAccelerators, (LiteRtEnvironment, LiteRtParamIndex *))             \
    X(LiteRtStatus, LiteRtGetAccelerator, (LiteRtEnvironment, LiteRtParamIndex, LiteRtAccelerator *)) \
    X(LiteRtStatus, LiteRtGetAcceleratorName, (LiteRtAccelerator, const char **))                  \
    X(LiteRtStatus, LiteRtGetAcceleratorHardwareSupport, (LiteRtAccelerator, LiteRtHwAcceleratorSet *))

#define LITERT_DECLARE_POINTER(ret, name, params) ret(*name) params;
typedef struct {
    LITERT_API_FUNCTIONS(LITERT_DECLARE_POINTER)
} LiteRtApi;
#undef LITERT_DECLARE_POINTER

#endif
