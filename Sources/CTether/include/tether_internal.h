/* Not installed: what the Swift half of libtether (Sources/TetherC) needs from the C half. */
#ifndef TETHER_INTERNAL_H
#define TETHER_INTERNAL_H

#include "tether.h"

/* Sets this thread's last-error sentence (copied, truncated to 1 KiB); NULL or "" clears it. */
void tether_internal_set_error(const char *message);

#endif
