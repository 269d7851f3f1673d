// Runs every kernel of rl.cu and logprobs.cu on the CPU emulator (emu.h) and
// checks it against float64 references written out here (numerical
// derivatives for the gradients). Built and run by TestKernelsOnCPUEmulator.
#include "emu.h"
#include "rl.cu"
#include "logprobs.cu"
#include <cstdio>
#include <random>
std::mt19937 rng(1);
float U() { return std::uniform_real_distribution<float>(-1, 1)(rng); }
double maxerr = 0;
void cmp(const char *what, double got, double want) {
  double e = std::fabs(got - want) / std::max(1.0, std::fabs(want));
  if (e > maxerr) maxerr = e;
  if (!(e < 1e-5)) { printf("MISMATCH %s: got %.9g want %.9g\n", what, got, want); exit(1); }
}
int main() {
  for (int L : {5, 40, 2047, 2048, 2049, 4500}) {
    int B = 3, start = L > 10 ? 7 : 1, N = L - start;
    std::vector<float> r(B * L), c(B * L), vr(B * L), vc(B * L), m(B * L);
    std::vector<float> ra(B * N, NAN), rr(B * N, NAN), ca(B * N, NAN), cr(B * N, NAN);
    for (int b = 0; b < B; b++) {
      int end = start + (b == 0 ? N - 1 : (int)(rng() % N));
      for (int t = 0; t < L; t++) {
        r[b*L+t] = U(); c[b*L+t] = U(); vr[b*L+t] = U(); vc[b*L+t] = U();
        m[b*L+t] = (t >= start - 1 && t <= end) || (t < start && rng() % 2) ? 1 : 0;
      }
    }
    float g = 1.0f, lam = 0.95f;
    launch(B, GAE_THREADS, [&] { gae(ra.data(), rr.data(), ca.data(), cr.data(), r.data(), vr.data(), c.data(), vc.data(), m.data(), L, start, g, lam); });
    for (int b = 0; b < B; b++) for (int s = 0; s < 2; s++) {
      const float *R = s ? c.data() : r.data(), *V = s ? vc.data() : vr.data();
      double A = 0;
      for (int t = L - 1; t >= start; t--) {
        double vn = t + 1 < L ? (double)V[b*L+t+1] * m[b*L+t+1] : 0;
        double d = (double)R[b*L+t] * m[b*L+t] + (double)g * vn - (double)V[b*L+t] * m[b*L+t];
        A = d + (double)g * lam * A;
        cmp("gae adv", s ? ca[b*N+t-start] : ra[b*N+t-start], A);
        cmp("gae ret", s ? cr[b*N+t-start] : rr[b*N+t-start], A + (double)V[b*L+t] * m[b*L+t]);
      }
    }
    // single stream
    std::vector<float> ra1(B * N, NAN), rr1(B * N, NAN);
    launch(B, GAE_THREADS, [&] { gae(ra1.data(), rr1.data(), nullptr, nullptr, r.data(), vr.data(), nullptr, nullptr, m.data(), L, start, g, lam); });
    for (int i = 0; i < B * N; i++) { cmp("gae1", ra1[i], ra[i]); cmp("gae1r", rr1[i], rr[i]); }
    printf("gae L=%d ok\n", L);
  }
  { // actor + critic loss
    int B = 5, N = 300;
    std::vector<float> lp(B*N), old(B*N), ar(B*N), ac(B*N), m(B*N), grad(B*N, NAN), out(3, NAN);
    std::vector<double> rows(4*B);
    std::vector<float> out4(4, NAN);
    for (int i = 0; i < B*N; i++) { lp[i] = U()*0.3f; old[i] = U()*0.3f; ar[i] = U(); ac[i] = U(); m[i] = rng()%4 ? 1 : 0; }
    for (int b = 0; b < B; b++) m[b*N] = 1;
    for (int t = 0; t < N; t++) m[2*N+t] = 0; // an empty row
    int NE = B - 1;
    float lam = 0.7f, eps = 0.2f;
    launch(B, 256, [&] { actor_loss_rows(rows.data(), lp.data(), old.data(), ar.data(), ac.data(), m.data(), N, lam, eps); });
    launch(1, 256, [&] { rows_mean(out4.data(), rows.data(), B); });
    launch(B, 256, [&] { actor_loss_grad(grad.data(), rows.data(), out4.data(), lp.data(), old.data(), ar.data(), ac.data(), m.data(), N, lam, eps); });
    out = out4; if (out4[3] != NE) { printf("count %g\n", out4[3]); return 1; }
    double loss = 0, cf = 0, kl = 0;
    for (int b = 0; b < B; b++) {
      if (b == 2) { for (int t = 0; t < N; t++) cmp("empty grad", grad[b*N+t], 0); continue; }
      double so = 0, sm = 0, sc = 0, sk = 0;
      for (int t = 0; t < N; t++) { int i = b*N+t;
        double A = ((double)ar[i] - (double)lam*ac[i]) / (1 + (double)lam), lr = (double)lp[i]-old[i], rho = std::exp(lr);
        double s1 = A*rho, s2 = A*std::fmin(std::fmax(rho, 1-(double)eps), 1+(double)eps);
        so += std::fmin(s1,s2)*m[i]; sm += m[i]; sc += (std::fabs(rho-1) > eps)*m[i]; sk += (rho-1-lr)*m[i]; }
      loss += -so/sm/NE; cf += sc/sm/NE; kl += sk/sm/NE;
      for (int t = 0; t < N; t++) { int i = b*N+t;
        // numeric gradient
        auto f = [&](double x) { double A = ((double)ar[i] - (double)lam*ac[i]) / (1 + (double)lam), rho = std::exp(x-old[i]);
          return -std::fmin(A*rho, A*std::fmin(std::fmax(rho, 1-(double)eps), 1+(double)eps))*m[i]/sm/NE; };
        double h = 1e-6, num = (f(lp[i]+h)-f(lp[i]-h))/(2*h);
        cmp("actor grad", grad[i], num); }
    }
    cmp("actor loss", out[0], loss); cmp("clipfrac", out[1], cf); cmp("kl", out[2], kl);
    printf("actor ok loss=%g cf=%g kl=%g\n", out[0], out[1], out[2]);
    std::vector<float> v(B*N), ov(B*N), ret(B*N); float cv = 0.2f;
    for (int i = 0; i < B*N; i++) { v[i] = U(); ov[i] = U(); ret[i] = U(); }
    launch(B, 256, [&] { critic_loss_rows(rows.data(), v.data(), ov.data(), ret.data(), m.data(), N, cv); });
    launch(1, 256, [&] { rows_mean(out4.data(), rows.data(), B); });
    launch(B, 256, [&] { critic_loss_grad(grad.data(), rows.data(), out4.data(), v.data(), ov.data(), ret.data(), m.data(), N, cv); });
    out = out4;
    loss = 0;
    for (int b = 0; b < B; b++) { double s = 0, sm = 0; if (b == 2) continue;
      auto f = [&](int i, double x) { double vc = std::fmin(std::fmax(x, (double)ov[i]-cv), (double)ov[i]+cv);
        return std::fmax((x-ret[i])*(x-ret[i]), (vc-ret[i])*(vc-ret[i])); };
      for (int t = 0; t < N; t++) { int i = b*N+t; s += f(i, v[i])*m[i]; sm += m[i]; }
      loss += 0.5*s/sm/NE;
      for (int t = 0; t < N; t++) { int i = b*N+t; double h = 1e-6;
        cmp("critic grad", grad[i], 0.5*m[i]/sm/NE*(f(i, v[i]+h)-f(i, v[i]-h))/(2*h)); }
    }
    cmp("critic loss", out[0], loss);
    printf("critic ok %g\n", out[0]);
  }
  for (int V : {1000, 1001, 37}) { // log-probs
    int N = 3;
    float *x = (float*)aligned_alloc(16, sizeof(float)*N*V + 64), *dx = (float*)aligned_alloc(16, sizeof(float)*N*V + 64);
    std::vector<int> y = {0, V-1, -100}; std::vector<float> out(N, NAN), lse(N, NAN), gg = {0.5f, -2.0f, 1.0f};
    for (int i = 0; i < N*V; i++) x[i] = 8*U();
    x[1*V+5] = -INFINITY;
    launch(N, LP_THREADS, [&] { token_logprobs(out.data(), lse.data(), x, y.data(), V); });
    launch(N, LP_THREADS, [&] { token_logprobs_grad(dx, x, y.data(), lse.data(), gg.data(), V); });
    for (int n = 0; n < N; n++) { double mx = -1e30, s = 0; for (int v = 0; v < V; v++) mx = std::max(mx, (double)x[n*V+v]);
      for (int v = 0; v < V; v++) s += std::exp((double)x[n*V+v]-mx); double l = mx + std::log(s);
      cmp("lse", lse[n], l); cmp("logp", out[n], y[n] >= 0 ? x[n*V+y[n]] - l : 0);
      for (int v = 0; v < V; v++) cmp("dlogits", dx[n*V+v], y[n] < 0 ? 0 : gg[n]*((v==y[n]) - std::exp(x[n*V+v]-l))); }
    printf("logprobs V=%d ok\n", V);
  }
  { // kl_shape, end_scores
    int B = 4, L = 50; std::vector<float> lp(B*L), rf(B*L), m(B*L), rw = {1,2,3,4}, cs = {-1,-2,-3,-4}, R(B*L), C(B*L), o1(B), o2(B); std::vector<int> ei(B); std::vector<double> rows(4*B); std::vector<float> st(4);
    for (int i = 0; i < B*L; i++) { lp[i] = U(); rf[i] = U(); m[i] = 0; }
    for (int b = 0; b < 3; b++) for (int t = 3; t < 10 + 7*b; t++) m[b*L+t] = 1;
    launch(B, 128, [&] { kl_shape(R.data(), C.data(), rows.data(), lp.data(), rf.data(), m.data(), rw.data(), cs.data(), L, 5, 0.1f, 2.5f); });
    launch(1, 128, [&] { rows_mean(st.data(), rows.data(), B); });
    double KL = 0, RKL = 0;
    launch(B, 128, [&] { end_scores(o1.data(), o2.data(), ei.data(), lp.data(), rf.data(), m.data(), L); });
    for (int b = 0; b < B; b++) { int end = b < 3 ? 9 + 7*b : -1; if (ei[b] != end) { printf("end %d %d\n", ei[b], end); return 1; }
      if (end >= 0) { cmp("end1", o1[b], lp[b*L+end]); cmp("end2", o2[b], rf[b*L+end]); } else if (o1[b] != 0) { printf("want 0\n"); return 1; }
      for (int t = 0; t < L; t++) { double k = (double)lp[b*L+t]-rf[b*L+t];
        cmp("klr", R[b*L+t], std::fmin(std::fmax(-0.1*k + (t==end)*rw[b], -2.5), 2.5));
        cmp("klc", C[b*L+t], std::fmin(std::fmax(0.1*k + (t==end)*cs[b], -2.5), 2.5));
        if (t >= 5) { KL += k*m[b*L+t]/B; RKL += (double)R[b*L+t]*m[b*L+t]/B; } } }
    cmp("KL", st[0], KL); cmp("RKL", st[1], RKL);
    printf("kl/end ok\n");
  }
  printf("ALL OK maxrelerr %.3g\n", maxerr);
}
