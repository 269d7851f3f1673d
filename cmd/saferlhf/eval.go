package main

func runEvalRM(args []string) error { return errNotYet("eval-rm") }

func runEvalCM(args []string) error    { return errNotYet("eval-cm") }
func runEvalArena(args []string) error { return errNotYet("eval-arena") }
