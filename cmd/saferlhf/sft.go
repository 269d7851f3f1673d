package main

func runSFT(args []string) error { return errNotYet("sft") }
