/* pool.c: a persistent pthread pool. eng_parallel hands out task indices
 * through an atomic counter; tasks write disjoint outputs, so results do not
 * depend on which thread runs which task. */
#define _GNU_SOURCE
#include "engine.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define MAXTHREADS 256

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t callmu = PTHREAD_MUTEX_INITIALIZER; /* one parallel region at a time */
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done = PTHREAD_COND_INITIALIZER;
static int nthreads = 0;  /* wanted threads (caller included) */
static int started = 0;   /* worker threads running */
static unsigned long gen = 0;
static int active = 0;    /* workers still in the current region */
static eng_task_fn cur_fn;
static void *cur_arg;
static int cur_n;
static atomic_int next_task;

static __thread int in_region;

static void run_tasks(void) {
	in_region = 1;
	for (;;) {
		int t = atomic_fetch_add(&next_task, 1);
		if (t >= cur_n) break;
		cur_fn(cur_arg, t);
	}
	in_region = 0;
}

static void *worker(void *arg) {
	long id = (long)arg;
	unsigned long seen = 0;
	pthread_mutex_lock(&mu);
	for (;;) {
		while (gen == seen || id >= nthreads - 1) {
			if (gen != seen) seen = gen; /* region not for this thread */
			pthread_cond_wait(&wake, &mu);
		}
		seen = gen;
		pthread_mutex_unlock(&mu);
		run_tasks();
		pthread_mutex_lock(&mu);
		if (--active == 0) pthread_cond_signal(&done);
	}
	return NULL;
}

static int default_threads(void) {
	const char *e = getenv("SAFERLHF_THREADS");
	if (e && atoi(e) > 0) return atoi(e);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

int eng_threads(void) {
	pthread_mutex_lock(&mu);
	if (nthreads == 0) nthreads = default_threads();
	int n = nthreads;
	pthread_mutex_unlock(&mu);
	return n;
}

void eng_set_threads(int n) {
	if (n < 1) n = default_threads();
	if (n > MAXTHREADS) n = MAXTHREADS;
	pthread_mutex_lock(&callmu);
	pthread_mutex_lock(&mu);
	nthreads = n;
	pthread_mutex_unlock(&mu);
	pthread_mutex_unlock(&callmu);
}

void eng_parallel(int ntasks, eng_task_fn fn, void *arg) {
	if (ntasks <= 0) return;
	int nt = eng_threads();
	if (nt == 1 || ntasks == 1 || in_region) {
		for (int t = 0; t < ntasks; t++) fn(arg, t);
		return;
	}
	pthread_mutex_lock(&callmu);
	pthread_mutex_lock(&mu);
	nt = nthreads;
	while (started < nt - 1) {
		pthread_t th;
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&th, &at, worker, (void *)(long)started) != 0) {
			pthread_attr_destroy(&at);
			break;
		}
		pthread_attr_destroy(&at);
		started++;
	}
	int workers = nt - 1 < started ? nt - 1 : started;
	cur_fn = fn;
	cur_arg = arg;
	cur_n = ntasks;
	atomic_store(&next_task, 0);
	active = workers;
	gen++;
	pthread_cond_broadcast(&wake);
	pthread_mutex_unlock(&mu);
	run_tasks();
	pthread_mutex_lock(&mu);
	while (active > 0) pthread_cond_wait(&done, &mu);
	pthread_mutex_unlock(&mu);
	pthread_mutex_unlock(&callmu);
}
