/* fexp.h: a vectorisable expf (Cephes polynomial, ~1 ulp; exactly 0 below -87). */
#ifndef SAFERLHF_FEXP_H
#define SAFERLHF_FEXP_H
#include <stdint.h>

static inline float fexp(float x) {
	union {
		float f;
		int32_t i;
	} t, p;
	float zero = x < -87.0f ? 0.0f : 1.0f;
	x = x < -87.0f ? -87.0f : x;
	x = x > 88.0f ? 88.0f : x;
	t.f = x * 1.44269504088896341f + 12582912.0f;
	float n = t.f - 12582912.0f;
	int32_t ni = t.i - 0x4B400000;
	float r = x - n * 0.693359375f + n * 2.12194440e-4f;
	float q = 1.9875691500E-4f;
	q = q * r + 1.3981999507E-3f;
	q = q * r + 8.3334519073E-3f;
	q = q * r + 4.1665795894E-2f;
	q = q * r + 1.6666665459E-1f;
	q = q * r + 5.0000001201E-1f;
	p.f = q * r * r + r + 1.0f;
	p.i += ni * (1 << 23);
	return p.f * zero;
}

#endif
