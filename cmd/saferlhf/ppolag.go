package main

func runPPOLag(args []string) error { return errNotYet("ppo-lag") }

func runPPO(args []string) error { return errNotYet("ppo") }
