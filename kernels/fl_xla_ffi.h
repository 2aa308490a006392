/* fl_xla_ffi.h: the part of XLA's FFI C API (xla/ffi/api/c_api.h, API 0.x) that fastloss's
 * JAX handler uses, declared here so that building fastloss needs no JAX.
 *
 * The FFI's C API is a stable, versioned ABI: structs open with their size and only ever grow
 * at the end, so declaring a prefix of a struct (XLA_FFI_Api below) is enough to read the
 * fields it has. The handler only reads what XLA passes and calls XLA_FFI_Error_Create.
 * tests/test_jax.py compiles this header against jaxlib's own when jaxlib ships it.
 */
#ifndef FASTLOSS_XLA_FFI_H
#define FASTLOSS_XLA_FFI_H

#include <stddef.h>
#include <stdint.h>

#define FL_XLA_FFI_MAJOR 0
#define FL_XLA_FFI_MINOR 1  /* every struct used here exists unchanged since API 0.1 */

typedef enum { XLA_FFI_Extension_Metadata = 1 } XLA_FFI_Extension_Type;

typedef struct XLA_FFI_Extension_Base {
    size_t struct_size;
    XLA_FFI_Extension_Type type;
    struct XLA_FFI_Extension_Base* next;
} XLA_FFI_Extension_Base;

typedef struct XLA_FFI_Api_Version {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int major_version;
    int minor_version;
} XLA_FFI_Api_Version;

typedef struct XLA_FFI_Error XLA_FFI_Error;  /* opaque: XLA's */

typedef enum {
    XLA_FFI_Error_Code_INVALID_ARGUMENT = 3,
    XLA_FFI_Error_Code_RESOURCE_EXHAUSTED = 8,
} XLA_FFI_Error_Code;

typedef struct XLA_FFI_Error_Create_Args {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    const char* message;  /* copied by XLA */
    XLA_FFI_Error_Code errc;
} XLA_FFI_Error_Create_Args;

typedef XLA_FFI_Error* XLA_FFI_Error_Create(XLA_FFI_Error_Create_Args* args);

typedef enum {
    XLA_FFI_DataType_PRED = 1,
    XLA_FFI_DataType_S8 = 2,
    XLA_FFI_DataType_S16 = 3,
    XLA_FFI_DataType_S32 = 4,
    XLA_FFI_DataType_S64 = 5,
    XLA_FFI_DataType_U8 = 6,
    XLA_FFI_DataType_U16 = 7,
    XLA_FFI_DataType_U32 = 8,
    XLA_FFI_DataType_U64 = 9,
    XLA_FFI_DataType_F16 = 10,
    XLA_FFI_DataType_F32 = 11,
    XLA_FFI_DataType_F64 = 12,
    XLA_FFI_DataType_BF16 = 16,
} XLA_FFI_DataType;

typedef struct XLA_FFI_Buffer {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    XLA_FFI_DataType dtype;
    void* data;
    int64_t rank;
    int64_t* dims;
} XLA_FFI_Buffer;

typedef enum { XLA_FFI_ArgType_BUFFER = 1 } XLA_FFI_ArgType;
typedef enum { XLA_FFI_RetType_BUFFER = 1 } XLA_FFI_RetType;
typedef enum { XLA_FFI_AttrType_SCALAR = 3 } XLA_FFI_AttrType;

typedef struct XLA_FFI_ByteSpan {
    const char* ptr;
    size_t len;
} XLA_FFI_ByteSpan;

typedef struct XLA_FFI_Scalar {
    XLA_FFI_DataType dtype;
    void* value;
} XLA_FFI_Scalar;

typedef enum { XLA_FFI_ExecutionStage_EXECUTE = 3 } XLA_FFI_ExecutionStage;

typedef struct XLA_FFI_Args {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int64_t size;
    XLA_FFI_ArgType* types;
    void** args;
} XLA_FFI_Args;

typedef struct XLA_FFI_Rets {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int64_t size;
    XLA_FFI_RetType* types;
    void** rets;
} XLA_FFI_Rets;

typedef struct XLA_FFI_Attrs {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int64_t size;
    XLA_FFI_AttrType* types;
    XLA_FFI_ByteSpan** names;
    void** attrs;
} XLA_FFI_Attrs;

/* the API's function table, up to the one function fastloss calls */
typedef struct XLA_FFI_Api {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    XLA_FFI_Api_Version api_version;
    const void* internal_api;
    XLA_FFI_Error_Create* XLA_FFI_Error_Create;
} XLA_FFI_Api;

typedef struct XLA_FFI_CallFrame {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    const XLA_FFI_Api* api;
    void* ctx;
    XLA_FFI_ExecutionStage stage;
    XLA_FFI_Args args;
    XLA_FFI_Rets rets;
    XLA_FFI_Attrs attrs;
} XLA_FFI_CallFrame;

typedef uint32_t XLA_FFI_Handler_Traits;

typedef struct XLA_FFI_Metadata {
    size_t struct_size;
    XLA_FFI_Api_Version api_version;
    XLA_FFI_Handler_Traits traits;
} XLA_FFI_Metadata;

typedef struct XLA_FFI_Metadata_Extension {
    XLA_FFI_Extension_Base extension_base;
    XLA_FFI_Metadata* metadata;
} XLA_FFI_Metadata_Extension;

typedef XLA_FFI_Error* XLA_FFI_Handler(XLA_FFI_CallFrame* call_frame);

/* an error XLA raises in Python (code INVALID_ARGUMENT) */
static inline XLA_FFI_Error* fl_xla_error(XLA_FFI_CallFrame* frame, const char* message) {
    XLA_FFI_Error_Create_Args args;
    args.struct_size = offsetof(XLA_FFI_Error_Create_Args, errc) + sizeof(XLA_FFI_Error_Code);
    args.extension_start = NULL;
    args.message = message;
    args.errc = XLA_FFI_Error_Code_INVALID_ARGUMENT;
    return frame->api->XLA_FFI_Error_Create(&args);
}

/* whether attribute `name` is the NUL-terminated `want` */
static inline int fl_xla_name_is(const XLA_FFI_ByteSpan* name, const char* want) {
    size_t i;
    for (i = 0; i < name->len; i++)
        if (want[i] != name->ptr[i] || want[i] == 0)
            return 0;
    return want[name->len] == 0;
}

#endif
