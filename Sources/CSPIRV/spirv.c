#include "CSPIRV.h"

#include <spirv-tools/libspirv.h>
#include <spirv_cross/spirv_cross_c.h>
#include <stdio.h>
#include <string.h>

int tether_spirv_validate(const uint32_t *words, size_t count, int vulkan_minor, char *error, size_t error_len) {
    spv_context context = spvContextCreate(vulkan_minor >= 3 ? SPV_ENV_VULKAN_1_3 : SPV_ENV_VULKAN_1_2);
    if (!context) {
        snprintf(error, error_len, "SPIRV-Tools could not create a context");
        return 1;
    }
    spv_validator_options options = spvValidatorOptionsCreate();
    spv_const_binary_t binary = {words, count};
    spv_diagnostic diagnostic = NULL;
    spv_result_t result = spvValidateWithOptions(context, options, &binary, &diagnostic);
    if (result != SPV_SUCCESS) {
        if (diagnostic && diagnostic->error)
            snprintf(error, error_len, "%s", diagnostic->error);
        else
            snprintf(error, error_len, "SPIRV-Tools rejected the module (result %d)", (int)result);
    }
    spvDiagnosticDestroy(diagnostic);
    spvValidatorOptionsDestroy(options);
    spvContextDestroy(context);
    return result == SPV_SUCCESS ? 0 : 1;
}

static void copy_name(char *dst, const char *src) {
    snprintf(dst, TETHER_SPV_NAME_BYTES, "%s", src ? src : "");
}

static uint32_t scalar_of(spvc_compiler compiler, spvc_type_id id) {
    spvc_type type = spvc_compiler_get_type_handle(compiler, id);
    if (!type || spvc_type_get_vector_size(type) != 1 || spvc_type_get_columns(type) != 1) return TETHER_SPV_OTHER;
    switch (spvc_type_get_basetype(type)) {
    case SPVC_BASETYPE_BOOLEAN: return TETHER_SPV_BOOL;
    case SPVC_BASETYPE_INT32: return TETHER_SPV_INT32;
    case SPVC_BASETYPE_UINT32: return TETHER_SPV_UINT32;
    case SPVC_BASETYPE_FP32: return TETHER_SPV_FLOAT32;
    case SPVC_BASETYPE_INT64: return TETHER_SPV_INT64;
    case SPVC_BASETYPE_UINT64: return TETHER_SPV_UINT64;
    case SPVC_BASETYPE_FP64: return TETHER_SPV_FLOAT64;
    default: return TETHER_SPV_OTHER;
    }
}

#define FAIL(...)                                        \
    do {                                                 \
        snprintf(error, error_len, __VA_ARGS__);         \
        spvc_context_destroy(context);                   \
        return 1;                                        \
    } while (0)

// Adds the buffers of one resource kind to `out`.
static int add_buffers(spvc_compiler compiler, spvc_resources resources, spvc_resource_type type, uint32_t kind,
                       tether_spv_module *out) {
    const spvc_reflected_resource *list = NULL;
    size_t n = 0;
    if (spvc_resources_get_resource_list_for_type(resources, type, &list, &n) != SPVC_SUCCESS) return 1;
    for (size_t i = 0; i < n; i++) {
        if (out->binding_count >= TETHER_SPV_MAX_BINDINGS) {
            out->too_many = 1;
            return 0;
        }
        tether_spv_binding *b = &out->bindings[out->binding_count++];
        memset(b, 0, sizeof(*b));
        b->set = spvc_compiler_get_decoration(compiler, list[i].id, SpvDecorationDescriptorSet);
        b->binding = spvc_compiler_get_decoration(compiler, list[i].id, SpvDecorationBinding);
        b->kind = kind;
        spvc_type declared = spvc_compiler_get_type_handle(compiler, list[i].type_id);
        b->array_dimensions = declared ? spvc_type_get_num_array_dimensions(declared) : 0;
        spvc_type base = spvc_compiler_get_type_handle(compiler, list[i].base_type_id);
        size_t size = 0;
        if (base && spvc_compiler_get_declared_struct_size(compiler, base, &size) == SPVC_SUCCESS) b->min_bytes = size;
        size_t one = 0;
        if (base && spvc_compiler_get_declared_struct_size_runtime_array(compiler, base, 1, &one) == SPVC_SUCCESS &&
            one > size)
            b->runtime_stride = one - size;
        copy_name(b->name, list[i].name);
    }
    return 0;
}

int tether_spirv_reflect(const uint32_t *words, size_t count, const char *entry, tether_spv_module *out,
                         char *error, size_t error_len) {
    memset(out, 0, sizeof(*out));
    if (count >= 2) out->spirv_version = words[1];
    spvc_context context = NULL;
    if (spvc_context_create(&context) != SPVC_SUCCESS) {
        snprintf(error, error_len, "SPIRV-Cross could not create a context");
        return 1;
    }
    spvc_parsed_ir ir = NULL;
    spvc_compiler compiler = NULL;
    if (spvc_context_parse_spirv(context, words, count, &ir) != SPVC_SUCCESS ||
        spvc_context_create_compiler(context, SPVC_BACKEND_NONE, ir, SPVC_CAPTURE_MODE_TAKE_OWNERSHIP, &compiler) !=
            SPVC_SUCCESS)
        FAIL("SPIRV-Cross could not parse the module: %s", spvc_context_get_last_error_string(context));

    // The entry point: the one named, else the only GLCompute one.
    const spvc_entry_point *entries = NULL;
    size_t entry_count = 0;
    if (spvc_compiler_get_entry_points(compiler, &entries, &entry_count) != SPVC_SUCCESS)
        FAIL("the module's entry points cannot be read");
    const char *chosen = NULL;
    size_t compute = 0;
    for (size_t i = 0; i < entry_count; i++) {
        if (entries[i].execution_model != SpvExecutionModelGLCompute) continue;
        compute++;
        if (entry && entry[0]) {
            if (strcmp(entries[i].name, entry) == 0) chosen = entries[i].name;
        } else if (!chosen) {
            chosen = entries[i].name;
        }
    }
    if (compute == 0) FAIL("the module has no compute (GLCompute) entry point");
    if (entry && entry[0] && !chosen) FAIL("the module has no compute entry point named \"%s\"", entry);
    if (!(entry && entry[0]) && compute > 1) FAIL("the module has %zu compute entry points: name the one to run", compute);
    if (strlen(chosen) >= TETHER_SPV_NAME_BYTES) FAIL("the entry point's name is longer than %d bytes", TETHER_SPV_NAME_BYTES - 1);
    copy_name(out->entry, chosen);
    if (spvc_compiler_set_entry_point(compiler, chosen, SpvExecutionModelGLCompute) != SPVC_SUCCESS)
        FAIL("cannot select entry point \"%s\"", chosen);

    for (unsigned d = 0; d < 3; d++) {
        out->local_size[d] = spvc_compiler_get_execution_mode_argument_by_index(compiler, SpvExecutionModeLocalSize, d);
        out->local_size_spec_id[d] = UINT32_MAX;
    }
    // A WorkgroupSize built-in constant replaces LocalSize (SPIR-V 2.2 "WorkgroupSize"): its
    // components are the size, and those that are specialization constants can be overridden.
    spvc_specialization_constant x, y, z;
    spvc_constant_id workgroup = spvc_compiler_get_work_group_size_specialization_constants(compiler, &x, &y, &z);
    if (workgroup != 0) {
        spvc_constant c = spvc_compiler_get_constant_handle(compiler, workgroup);
        if (!c) FAIL("the module's WorkgroupSize constant cannot be read");
        for (unsigned d = 0; d < 3; d++) out->local_size[d] = spvc_constant_get_scalar_u32(c, 0, d);
    }
    spvc_specialization_constant dims[3] = {x, y, z};
    for (unsigned d = 0; d < 3; d++) {
        if (dims[d].id == 0) continue;
        if (!spvc_compiler_has_decoration(compiler, dims[d].id, SpvDecorationSpecId)) {
            // An expression of specialization constants (OpSpecConstantOp): known once specialized.
            out->local_size[d] = 0;
            continue;
        }
        out->local_size_spec_id[d] = dims[d].constant_id;
        spvc_constant c = spvc_compiler_get_constant_handle(compiler, dims[d].id);
        if (c) out->local_size[d] = spvc_constant_get_scalar_u32(c, 0, 0);
    }
    if (spvc_compiler_get_execution_mode_argument_by_index(compiler, SpvExecutionModeLocalSizeId, 0) != 0)
        FAIL("the module sets its local size with LocalSizeId; use LocalSize (local_size_x_id in GLSL)");

    // Only what the entry point really uses.
    spvc_set active = NULL;
    spvc_resources resources = NULL;
    if (spvc_compiler_get_active_interface_variables(compiler, &active) != SPVC_SUCCESS ||
        spvc_compiler_create_shader_resources_for_active_variables(compiler, &resources, active) != SPVC_SUCCESS)
        FAIL("the module's resources cannot be reflected: %s", spvc_context_get_last_error_string(context));
    if (add_buffers(compiler, resources, SPVC_RESOURCE_TYPE_STORAGE_BUFFER, TETHER_SPV_STORAGE_BUFFER, out) ||
        add_buffers(compiler, resources, SPVC_RESOURCE_TYPE_UNIFORM_BUFFER, TETHER_SPV_UNIFORM_BUFFER, out))
        FAIL("the module's buffers cannot be reflected");

    static const struct { spvc_resource_type type; const char *kind; } unsupported[] = {
        {SPVC_RESOURCE_TYPE_STORAGE_IMAGE, "storage image"},
        {SPVC_RESOURCE_TYPE_SAMPLED_IMAGE, "sampled image"},
        {SPVC_RESOURCE_TYPE_SEPARATE_IMAGE, "image"},
        {SPVC_RESOURCE_TYPE_SEPARATE_SAMPLERS, "sampler"},
        {SPVC_RESOURCE_TYPE_ATOMIC_COUNTER, "atomic counter"},
        {SPVC_RESOURCE_TYPE_ACCELERATION_STRUCTURE, "acceleration structure"},
        {SPVC_RESOURCE_TYPE_SUBPASS_INPUT, "subpass input"},
    };
    for (size_t k = 0; k < sizeof(unsupported) / sizeof(unsupported[0]) && !out->unsupported_kind[0]; k++) {
        const spvc_reflected_resource *list = NULL;
        size_t n = 0;
        if (spvc_resources_get_resource_list_for_type(resources, unsupported[k].type, &list, &n) == SPVC_SUCCESS && n > 0) {
            copy_name(out->unsupported_resource, list[0].name);
            snprintf(out->unsupported_kind, sizeof(out->unsupported_kind), "%s", unsupported[k].kind);
        }
    }

    const spvc_reflected_resource *push = NULL;
    size_t push_count = 0;
    if (spvc_resources_get_resource_list_for_type(resources, SPVC_RESOURCE_TYPE_PUSH_CONSTANT, &push, &push_count) ==
        SPVC_SUCCESS) {
        out->push_constant_blocks = (uint32_t)push_count;
        if (push_count > 0) {
            size_t size = 0;
            spvc_type base = spvc_compiler_get_type_handle(compiler, push[0].base_type_id);
            if (base && spvc_compiler_get_declared_struct_size(compiler, base, &size) == SPVC_SUCCESS)
                out->push_constant_bytes = (uint32_t)size;
        }
    }

    const spvc_specialization_constant *specs = NULL;
    size_t spec_count = 0;
    if (spvc_compiler_get_specialization_constants(compiler, &specs, &spec_count) == SPVC_SUCCESS) {
        for (size_t i = 0; i < spec_count; i++) {
            if (out->spec_count >= TETHER_SPV_MAX_SPECS) {
                out->too_many = 1;
                break;
            }
            spvc_constant c = spvc_compiler_get_constant_handle(compiler, specs[i].id);
            if (!c) continue;
            tether_spv_spec *s = &out->specs[out->spec_count++];
            s->constant_id = specs[i].constant_id;
            s->type = scalar_of(compiler, spvc_constant_get_type(c));
            if (s->type == TETHER_SPV_INT64 || s->type == TETHER_SPV_UINT64 || s->type == TETHER_SPV_FLOAT64)
            {
                // The C API has no 64-bit integer getter; the constant's storage is one 64-bit union.
                double bits = spvc_constant_get_scalar_fp64(c, 0, 0);
                memcpy(&s->default_bits, &bits, sizeof(bits));
            }
            else
                s->default_bits = spvc_constant_get_scalar_u32(c, 0, 0);
            copy_name(s->name, spvc_compiler_get_name(compiler, specs[i].id));
        }
    }

    spvc_compiler_update_active_builtins(compiler);
    out->uses_num_workgroups = spvc_compiler_has_active_builtin(compiler, SpvBuiltInNumWorkgroups, SpvStorageClassInput);

    const SpvCapability *caps = NULL;
    size_t cap_count = 0;
    if (spvc_compiler_get_declared_capabilities(compiler, &caps, &cap_count) == SPVC_SUCCESS) {
        for (size_t i = 0; i < cap_count; i++) {
            if (out->capability_count >= TETHER_SPV_MAX_CAPABILITIES) {
                out->too_many = 1;
                break;
            }
            out->capabilities[out->capability_count++] = (uint32_t)caps[i];
        }
    }
    spvc_context_destroy(context);
    return 0;
}
