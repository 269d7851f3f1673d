// Package dist is saferlhf's data-parallel plumbing: one process per GPU,
// started by the launchers people already run (torchrun --no-python, srun,
// mpirun, a Kubernetes JobSet), never by a coordinator of our own.
//
// FromEnv reads the rank, world size, local rank and rendezvous address those
// launchers set. Communicator is the set of collectives the trainers need
// (AllReduce sum/mean of float32, Broadcast, AllGather, Barrier), each bounded
// by a timeout so that a dead or stuck rank makes every rank fail with an error
// naming it instead of hanging. Implementations:
//
//   - Self: a single process (collectives return their input);
//
//   - TCP: a star over TCP with rank 0 at the rendezvous address, in pure Go so
//     that it runs in the default CGO_ENABLED=0 build and in CI; sums are taken
//     in rank order at rank 0, so every rank gets the same bits. NewLocalGroup
//     connects several ranks of one process over loopback (tests).
//
//   - NCCL, for device buffers on GPUs, lives in native (dlopen of libnccl.so.2);
//     its unique id travels over a TCP Communicator's Broadcast.
//
// A rank starts like this:
//
//	env, err := dist.FromEnv(nil) // Single when no launcher is present
//	comm, err := dist.Connect(ctx, env, dist.Options{})
//	err = comm.AllReduce(ctx, grads, dist.Mean)
package dist
