// Package configs loads a service's configuration. The YAML file of each
// service in this folder is embedded and is the documented default of every
// key; a --config file, FANOUT_* environment variables and --flags override
// it, in that order. Any unknown key, bad value or missing required value
// fails with one line naming the key.
package configs

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

//go:embed *.yaml
var defaults embed.FS

// ErrHelp is returned when --help was asked for; the usage was printed.
var ErrHelp = pflag.ErrHelp

// MustLoad is Load of the process's arguments for a service's main: --help
// exits 0, and a bad configuration is reported on one line and exits 2.
func MustLoad(service string, out any) {
	if err := Load(service, os.Args[1:], out); err != nil {
		if errors.Is(err, ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "%s: bad configuration: %v\n", service, err)
		os.Exit(2)
	}
}

// Default returns the embedded default YAML of a service.
func Default(service string) ([]byte, error) {
	return defaults.ReadFile(service + ".yaml")
}

// Load fills out (a pointer to a struct with mapstructure tags) for service
// from defaults, the --config file, the environment and args.
func Load(service string, args []string, out any) error {
	rest, err := LoadCommand(service, args, out, nil)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("unexpected argument %q (flags are --key value; see --help)", rest[0])
	}
	return nil
}

// LoadCommand is Load for a command line tool: extra holds the command's own
// flags (parsed together with the config keys), and the positional arguments
// are returned.
func LoadCommand(service string, args []string, out any, extra *pflag.FlagSet) ([]string, error) {
	def, err := Default(service)
	if err != nil {
		return nil, fmt.Errorf("no default config for service %q", service)
	}
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(def)); err != nil {
		return nil, fmt.Errorf("embedded %s.yaml: %w", service, err)
	}
	known := map[string]bool{}
	for _, k := range v.AllKeys() {
		known[k] = true
	}

	fs := pflag.NewFlagSet(service, pflag.ContinueOnError)
	configFile := fs.String("config", "", "YAML config file (keys as in configs/"+service+".yaml)")
	keys := v.AllKeys()
	sort.Strings(keys)
	for _, k := range keys {
		fs.String(k, "", fmt.Sprintf("overrides %s (env FANOUT_%s, default %v)", k, envName(k), v.Get(k)))
	}
	fs.SetOutput(os.Stderr)
	if extra != nil {
		fs.AddFlagSet(extra)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}

	if *configFile != "" {
		data, err := os.ReadFile(*configFile)
		if err != nil {
			return nil, fmt.Errorf("config file: %w", err)
		}
		fv := viper.New()
		fv.SetConfigType("yaml")
		if err := fv.ReadConfig(bytes.NewReader(data)); err != nil {
			return nil, fmt.Errorf("config file %s is not valid YAML: %w", *configFile, err)
		}
		for _, k := range fv.AllKeys() {
			if !known[k] {
				return nil, fmt.Errorf("config file %s: unknown key %q (known keys are in configs/%s.yaml)", *configFile, k, service)
			}
		}
		if err := v.MergeConfigMap(fv.AllSettings()); err != nil {
			return nil, fmt.Errorf("config file %s: %w", *configFile, err)
		}
	}

	v.SetEnvPrefix("FANOUT")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed && known[f.Name] {
			v.Set(f.Name, f.Value.String())
		}
	})

	// Decode key by key so an error names the key.
	for _, k := range keys {
		if err := checkType(v, k); err != nil {
			return nil, err
		}
	}
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:           out,
		WeaklyTypedInput: true,
		ErrorUnused:      false,
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		),
	})
	if err != nil {
		return nil, err
	}
	settings := map[string]any{}
	for _, k := range keys {
		val := v.Get(k)
		if secondsKeys[k] {
			val = plainSeconds(val)
		}
		setNested(settings, k, val)
	}
	if err := dec.Decode(settings); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if val, ok := out.(interface{ Validate() error }); ok {
		if err := val.Validate(); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	return fs.Args(), nil
}

// checkType makes sure the value of k can become the type of its default.
func checkType(v *viper.Viper, k string) error {
	bad := func(want string) error {
		return fmt.Errorf("config key %s (env FANOUT_%s): value %q is not %s", k, envName(k), fmt.Sprint(v.Get(k)), want)
	}
	def := defaultValue(k)
	raw := v.Get(k)
	s, isString := raw.(string)
	if !isString {
		return nil // came from YAML with a YAML type; mapstructure checks it
	}
	switch def.(type) {
	case int, int64:
		var n int64
		if _, err := fmt.Sscan(s, &n); err != nil || fmt.Sprint(n) != strings.TrimSpace(s) {
			return bad("a whole number")
		}
	case bool:
		if s != "true" && s != "false" {
			return bad("true or false")
		}
	case string:
		if secondsKeys[k] {
			if _, err := time.ParseDuration(fmt.Sprint(plainSeconds(s))); err != nil {
				return bad("a duration such as 500ms, 5s or 2m, or whole seconds")
			}
		} else if looksLikeDuration(k) {
			if _, err := time.ParseDuration(s); err != nil {
				return bad("a duration such as 500ms, 5s or 2m")
			}
		}
	}
	return nil
}

// secondsKeys are the duration keys that also take plain whole seconds, as
// the Electric settings they stand for do (ELECTRIC_CACHE_MAX_AGE=60).
var secondsKeys = map[string]bool{"api.max_age": true, "api.stale_age": true}

// plainSeconds turns a whole number (from YAML, or text from the
// environment or a flag) into a duration in seconds; anything else is
// returned as it is.
func plainSeconds(val any) any {
	switch n := val.(type) {
	case int:
		return time.Duration(n) * time.Second
	case int64:
		return time.Duration(n) * time.Second
	case string:
		if secs, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64); err == nil {
			return (time.Duration(secs) * time.Second).String()
		}
	}
	return val
}

// durationKeys are filled in by the embedded defaults so checkType knows
// which string keys are durations.
var durationKeys = map[string]bool{}

func looksLikeDuration(k string) bool { return durationKeys[k] }

var defaultValues = map[string]any{}

func defaultValue(k string) any { return defaultValues[k] }

func init() {
	entries, _ := defaults.ReadDir(".")
	for _, e := range entries {
		data, _ := defaults.ReadFile(e.Name())
		v := viper.New()
		v.SetConfigType("yaml")
		if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
			panic(fmt.Sprintf("embedded %s: %v", e.Name(), err))
		}
		for _, k := range v.AllKeys() {
			val := v.Get(k)
			defaultValues[k] = val
			if s, ok := val.(string); ok {
				if _, err := time.ParseDuration(s); err == nil && s != "0" {
					durationKeys[k] = true
				}
			}
		}
	}
}

func envName(k string) string { return strings.ToUpper(strings.ReplaceAll(k, ".", "_")) }

func setNested(m map[string]any, key string, val any) {
	parts := strings.Split(key, ".")
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = val
}

// Require returns an error naming every empty string field tagged
// `required:"true"` in a config struct (nested structs included).
func Require(cfg any) error {
	var missing []string
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := prefix + f.Tag.Get("mapstructure")
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Time{}) {
				walk(v.Field(i), name+".")
				continue
			}
			if f.Tag.Get("required") == "true" && v.Field(i).IsZero() {
				missing = append(missing, name)
			}
		}
	}
	walk(reflect.Indirect(reflect.ValueOf(cfg)), "")
	if len(missing) > 0 {
		var msgs []string
		for _, m := range missing {
			msgs = append(msgs, fmt.Sprintf("%s (env FANOUT_%s)", m, envName(m)))
		}
		return errors.New("missing required value: " + strings.Join(msgs, ", "))
	}
	return nil
}
