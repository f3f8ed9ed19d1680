/*
 * handles.c — per-thread tables from never-reused 64-bit ids to pointers.
 *
 * An asynchronous completion (a DNS answer, a Redis reply, a worker job
 * posted back to the loop) carries an id instead of a pointer. When its
 * owner goes away first, the owner unregisters the id and the completion's
 * lookup finds NULL instead of freed memory. Ids come from one process-wide
 * atomic counter, so an id is never handed out twice — not even by another
 * thread — and a stale id can never resolve to a newer object.
 *
 * Each thread has its own table (only the owning loop touches it, so no
 * locks): open addressing with linear probing and backward-shift deletion,
 * which keeps lookups short without tombstones. The table grows at 50% load
 * and is freed when it empties, so idle threads hold no memory.
 */
#include "config.h"

#include <stdatomic.h>
#include <stdlib.h>

#include "lib/lib.h"

struct handle_slot {
	uint64_t id; /* 0 = empty; ids start at 1 */
	void *ptr;
};

struct handle_table {
	struct handle_slot *slots;
	size_t cap; /* power of two, or 0 */
	size_t count;
};

static _Atomic uint64_t handle_next_id = 1;
static __thread struct handle_table handle_table;

/* Ids are sequential; a multiplicative mix spreads them over the table. */
static size_t handle_hash(uint64_t id, size_t cap)
{
	id *= UINT64_C(0x9E3779B97F4A7C15);
	return (size_t)(id >> 32) & (cap - 1);
}

static void handle_insert_slot(struct handle_slot *slots, size_t cap,
			       uint64_t id, void *ptr)
{
	size_t i = handle_hash(id, cap);

	while (slots[i].id != 0)
		i = (i + 1) & (cap - 1);
	slots[i].id = id;
	slots[i].ptr = ptr;
}

static void handle_table_grow(struct handle_table *t)
{
	size_t new_cap = t->cap == 0 ? 16 : t->cap * 2;
	struct handle_slot *new_slots = xcalloc(new_cap, sizeof(*new_slots));

	for (size_t i = 0; i < t->cap; i++) {
		if (t->slots[i].id != 0)
			handle_insert_slot(new_slots, new_cap,
					   t->slots[i].id, t->slots[i].ptr);
	}
	free(t->slots);
	t->slots = new_slots;
	t->cap = new_cap;
}

static struct handle_slot *handle_find_slot(const struct handle_table *t, uint64_t id)
{
	if (t->cap == 0 || id == 0)
		return NULL;
	for (size_t i = handle_hash(id, t->cap);; i = (i + 1) & (t->cap - 1)) {
		if (t->slots[i].id == id)
			return &t->slots[i];
		if (t->slots[i].id == 0)
			return NULL;
	}
}

uint64_t handle_register(void *ptr)
{
	struct handle_table *t = &handle_table;
	uint64_t id = atomic_fetch_add_explicit(&handle_next_id, 1,
						memory_order_relaxed);

	if ((t->count + 1) * 2 > t->cap)
		handle_table_grow(t);
	handle_insert_slot(t->slots, t->cap, id, ptr);
	t->count++;
	return id;
}

void *handle_lookup(uint64_t id)
{
	struct handle_slot *slot = handle_find_slot(&handle_table, id);

	return slot == NULL ? NULL : slot->ptr;
}

void handle_unregister(uint64_t id)
{
	struct handle_table *t = &handle_table;
	struct handle_slot *slot = handle_find_slot(t, id);
	size_t hole, i, home;

	if (slot == NULL)
		return;
	t->count--;
	if (t->count == 0) {
		free(t->slots);
		t->slots = NULL;
		t->cap = 0;
		return;
	}
	/* Backward-shift deletion: pull later members of the probe run into
	 * the hole unless that would move them before their home slot. */
	hole = (size_t)(slot - t->slots);
	t->slots[hole].id = 0;
	t->slots[hole].ptr = NULL;
	for (i = (hole + 1) & (t->cap - 1); t->slots[i].id != 0;
	     i = (i + 1) & (t->cap - 1)) {
		home = handle_hash(t->slots[i].id, t->cap);
		/* distance from home to i vs. from home to hole, cyclically */
		if (((i - home) & (t->cap - 1)) >= ((i - hole) & (t->cap - 1))) {
			t->slots[hole] = t->slots[i];
			t->slots[i].id = 0;
			t->slots[i].ptr = NULL;
			hole = i;
		}
	}
}

size_t handle_count(void)
{
	return handle_table.count;
}
