/*
 * fuzz.h — what every libFuzzer target here shares: the entry point's
 * prototype and CHECK(), an invariant that aborts with its file, line and
 * text when it does not hold (libFuzzer then saves the input that broke it).
 */
#ifndef MXGUARD_FUZZ_H
#define MXGUARD_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "%s:%d: invariant failed: %s\n",     \
				__FILE__, __LINE__, #cond);                  \
			abort();                                             \
		}                                                            \
	} while (0)

#endif
