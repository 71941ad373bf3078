// SPDX-License-Identifier: GPL-2.0
/* redir.c without its per-message counters: what they cost (an experiment
 * of scripts/stream-experiments.sh, not for use). */
#define BPFPLAN_NO_COUNTERS
#include "../../bpf/redir.c"
