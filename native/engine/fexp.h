/* fexp.h: a vectorisable expf (Cephes polynomial, ~1 ulp; exactly 0 below -87). */
#ifndef SAFERLHF_FEXP_H
#define SAFERLHF_FEXP_H
#include <stdint.h>
#include <string.h>

static inline float fexp(float x) {
	float zero = x < -87.0f ? 0.0f : 1.0f;
	x = x < -87.0f ? -87.0f : x;
	x = x > 88.0f ? 88.0f : x;
	float t = x * 1.44269504088896341f + 12582912.0f;
	float n = t - 12582912.0f;
	int32_t ti;
	memcpy(&ti, &t, 4);
	int32_t ni = ti - 0x4B400000;
	float r = x - n * 0.693359375f + n * 2.12194440e-4f;
	float p = 1.9875691500E-4f;
	p = p * r + 1.3981999507E-3f;
	p = p * r + 8.3334519073E-3f;
	p = p * r + 4.1665795894E-2f;
	p = p * r + 1.6666665459E-1f;
	p = p * r + 5.0000001201E-1f;
	p = p * r * r + r + 1.0f;
	int32_t pi;
	memcpy(&pi, &p, 4);
	pi += ni * (1 << 23);
	memcpy(&p, &pi, 4);
	return p * zero;
}

#endif
