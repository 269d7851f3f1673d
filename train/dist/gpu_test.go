package dist

import "testing"

func TestVisibleDevices(t *testing.T) {
	two := Env{Rank: 3, WorldSize: 4, LocalRank: 1, LocalWorldSize: 2}
	for _, tc := range []struct {
		name    string
		env     Env
		current string
		want    string
		set     bool
		err     bool
	}{
		{name: "single", env: Single, current: "", want: "", set: false},
		{name: "unset", env: two, current: "", want: "1", set: true},
		{name: "list", env: two, current: "4,5", want: "5", set: true},
		{name: "already pinned", env: two, current: "7", want: "7", set: false},
		{name: "too few", env: Env{Rank: 0, WorldSize: 8, LocalRank: 0, LocalWorldSize: 4}, current: "0,1", err: true},
		{name: "one per node", env: Env{Rank: 1, WorldSize: 2, LocalRank: 0, LocalWorldSize: 1}, current: "", want: "", set: false},
	} {
		got, set, err := tc.env.VisibleDevices(tc.current)
		if (err != nil) != tc.err || got != tc.want || set != tc.set {
			t.Errorf("%s: got %q, %v, %v; want %q, %v, error %v", tc.name, got, set, err, tc.want, tc.set, tc.err)
		}
	}
}

func TestRequireSingle(t *testing.T) {
	if err := RequireSingle("ppo-lag"); err != nil {
		t.Fatalf("without a launcher: %v", err)
	}
	t.Setenv("RANK", "1")
	t.Setenv("WORLD_SIZE", "2")
	t.Setenv("MASTER_ADDR", "h")
	if err := RequireSingle("ppo-lag"); err == nil {
		t.Fatal("rank 1 of 2 accepted")
	}
}
