// The per-thread last-error sentence and the status names: plain C because a C thread-local is
// what `tether_last_error()` hands out (a pointer that stays valid until the thread's next call),
// and C11 `_Thread_local` needs no allocation, no key and no lock — fork-safe by construction.
#include <stdio.h>
#include "tether_internal.h"

static _Thread_local char last_error[1024];

void tether_internal_set_error(const char *message) {
    if (message == NULL) {
        last_error[0] = '\0';
        return;
    }
    snprintf(last_error, sizeof last_error, "%s", message);
}

const char *tether_last_error(void) { return last_error; }

int tether_abi_version(void) { return TETHER_ABI_VERSION; }

const char *tether_status_name(tether_status status) {
    switch (status) {
    case TETHER_OK: return "TETHER_OK";
    case TETHER_NOT_OWNER: return "TETHER_NOT_OWNER";
    case TETHER_OWNER_EXITED: return "TETHER_OWNER_EXITED";
    case TETHER_DEVICE_LOST: return "TETHER_DEVICE_LOST";
    case TETHER_INVALID_ARGUMENT: return "TETHER_INVALID_ARGUMENT";
    case TETHER_ADDRESS_FAULT: return "TETHER_ADDRESS_FAULT";
    case TETHER_UNKNOWN_KERNEL: return "TETHER_UNKNOWN_KERNEL";
    case TETHER_GRID_TOO_LARGE: return "TETHER_GRID_TOO_LARGE";
    case TETHER_BACKEND_UNAVAILABLE: return "TETHER_BACKEND_UNAVAILABLE";
    case TETHER_MALFORMED_MESSAGE: return "TETHER_MALFORMED_MESSAGE";
    case TETHER_UNSUPPORTED: return "TETHER_UNSUPPORTED";
    case TETHER_KILLED: return "TETHER_KILLED";
    case TETHER_NO_SUCH_THREAD: return "TETHER_NO_SUCH_THREAD";
    case TETHER_NO_SUCH_REGION: return "TETHER_NO_SUCH_REGION";
    case TETHER_RESOURCE_EXHAUSTED: return "TETHER_RESOURCE_EXHAUSTED";
    case TETHER_PERMISSION_DENIED: return "TETHER_PERMISSION_DENIED";
    case TETHER_DEVICE_ERROR: return "TETHER_DEVICE_ERROR";
    case TETHER_PROTOCOL_VERSION: return "TETHER_PROTOCOL_VERSION";
    case TETHER_TIMED_OUT: return "TETHER_TIMED_OUT";
    case TETHER_BAD_HANDLE: return "TETHER_BAD_HANDLE";
    case TETHER_BUFFER_TOO_SMALL: return "TETHER_BUFFER_TOO_SMALL";
    }
    return "TETHER_UNKNOWN_STATUS";
}

// The Swift side writes these structs field by field; their sizes are part of the ABI.
_Static_assert(sizeof(tether_thread_report) == 320, "tether_thread_report layout changed");
_Static_assert(sizeof(tether_timeline) == 72, "tether_timeline layout changed");
